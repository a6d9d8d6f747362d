"""The DALI graph: one small ``@pipeline_def`` function around one shared processing function.

It follows DALI's ResNet-50 example: a reader named ``READER`` that the iterator
is pointed at, and ``process_images``, which decodes and runs the plan's steps.
Decode runs on ``"cpu"``, or on ``"mixed"`` (nvJPEG / nvImageCodec) when the
feeder decodes on a GPU; every later op then runs on the decoder's side ("cpu" or
"gpu"), so both paths are the same graph with the device chosen.

Geometry: the plan's fused leading steps (``Plan.fused_steps``) run as the host
runs them, one affine warp of the written order's product (``feeding.affine``).
Each op appends its piece (``dali_warp``) to a DALI transform built in the graph
from each image's decoded shape, drawing its randomness there (``fn.random``), and
one ``fn.warp_affine`` resamples; where the map shrinks by more than
``affine.FILTER_ABOVE``, into the output's frame at the image's own scale, which an
antialiased resize brings to the output. DALI's coordinates put (0, 0) at the first
pixel's corner, the host's pieces at its centre: the pieces are the host's shifted
by half a pixel (tests/test_dali.py compares the matrices and the pictures). The
warp runs only where the step-by-step graph would resample twice (a rotation,
which ``fn.rotate`` does at the image's full size): a resize, crop and flip are
already one antialiased pass there (``warp_steps``; per batch of 8 on 2 CPU
threads the warp made Rotate, Resize, Flip 1.5x faster and Resize(256),
CenterCrop(224) 2.2x slower: tests/benchmarks/test_bench_dali_warp.py). Every other
step runs as its own DALI form (``Op.dali``).

Where DALI's picture differs from the host's: RandomResizedCrop's box comes from
DALI's own sampler (``fn.random_crop_generator``, as ``fn.random_resized_crop``'s:
torchvision's uniform area and log-uniform aspect, 10 tries, from DALI's generators,
and a fallback of its own), and the canvas is not capped at ``affine.CANVAS_MOST``
(see ``filter_canvas``).

Decode-time downscale: DALI's decoders have no reduced-scale (libjpeg
``scale_num/scale_denom``) decode, so a Resize-first plan decodes at full size
and resizes (antialiased) afterwards, and the warp's canvas costs the image's
area. Only region-of-interest decoding exists: a first step that has a DALI decode
form (``Op.dali_decode``: RandomResizedCrop) decodes just its window.

State: the feeder builds the graph with ``enable_checkpointing``, so DALI saves
what it carries between batches: the reader's position and shuffle, and every
random op's generators (``fn.random.*``, the window sampler). That holds for DALI's
own operators; an ``fn.external_source`` is saved only where its source is a
callable of the batch index (DALI's checkpointing docs), so none is used here.

Layout: the graph ends in HWC, the layout the decoder and every op work in. The
feeder exposes each batch as an (N, 3, H, W) view of that memory, channels_last
in torch's terms, as the host pipelines deliver theirs: no transpose here that
a channels_last model would undo on the device.
"""
from __future__ import annotations

from feeding import affine
from feeding.errors import MissingDependencyError
from feeding.ops import Op
from feeding.ops.dali_forms import dali_shape
from feeding.plan import Plan


def missing_dali(error: ImportError) -> MissingDependencyError:
    """The error for a machine without DALI, naming the package to install."""
    return MissingDependencyError(
        "the 'dali' pipeline needs NVIDIA DALI for CUDA 13 (torch's build): "
        f"pip install nvidia-dali-cuda130  ({error})"
    )


try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dali_math
except ImportError as error:
    raise missing_dali(error) from error

READER = "Reader"
OUTPUTS = ("images", "labels")


def process_images(encoded, steps: tuple[Op, ...], decoder: str, fused: int | None = None):
    """Decode and run the plan's steps; uint8 HWC out. The ops run where the decoder puts the pixels.

    ``fused``: how many leading steps run as one warp (``fused_warp``); None: ``warp_steps`` of the
    steps' own plan; 0: every step as its own DALI form (``Op.dali``), the graph as it was.
    """
    device = "gpu" if decoder == "mixed" else "cpu"
    steps = tuple(steps)
    fused = warp_steps(steps, Plan(steps, literal=False, output_size=(0, 0)).fused_steps) if fused is None else fused
    if fused:
        images = fused_warp(fn.decoders.image(encoded, device=decoder, output_type=types.RGB), steps[:fused], device)
        steps = steps[fused:]
        if not steps:
            return images  # warp_affine keeps uint8 HWC: no layout pass to add
    else:
        images = steps[0].dali_decode(encoded, decoder, device)
        if images is None:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        else:
            steps = steps[1:]
    mirror = steps[-1].dali_mirror() if steps else None
    if mirror is None:
        mirror = 0
    else:
        steps = steps[:-1]  # a flip at the end folds into the uint8 pass below (one pass, not two)
    for op in steps:
        images = op.dali(images, device)
    # No mean/std: stays uint8 (Normalize runs on the device after transfer). HWC in and out: a flip
    # and the cast to uint8 in one pass, no transpose (see the module docstring).
    return fn.crop_mirror_normalize(images, device=device, dtype=types.UINT8, output_layout="HWC", mirror=mirror)


def warp_steps(steps: tuple[Op, ...], planned: int) -> int:
    """How many of the ``planned`` leading steps (``Plan.fused_steps``) DALI runs as one warp: all of them
    where step by step they would resample twice (a turn, which ``fn.rotate`` does at the image's full
    size, or two resampling steps), none where step by step is already one antialiased pass (a region
    decode or ``fn.resize``, a crop, the flip folded into the last pass), which the warp would only add to."""
    head = steps[:planned]
    turns = any(op.warp_role == "turn" for op in head)
    return planned if turns or sum(op.resamples for op in head) > 1 else 0


def describe_geometry(steps: tuple[Op, ...], fused: int) -> str:
    """How the graph runs the geometry of ``steps`` with ``fused`` warped steps, in one sentence."""
    head = steps[:fused]
    text = (f"{', '.join(type(op).__name__ for op in head)} as one warp_affine built in the graph"
            if head else "geometry step by step, each op's DALI form")
    if any(op.warp_role == "window" for op in steps):
        text += "; RandomResizedCrop's box from DALI's own sampler"
    return text


def fused_warp(images, steps: tuple[Op, ...], device: str):
    """``steps`` as one ``fn.warp_affine``: the product of their pieces (``dali_warp``), built in the graph
    from each image's decoded shape. Where the map shrinks by more than ``affine.FILTER_ABOVE``, the warp
    draws the output's frame at the image's own scale and an antialiased resize shrinks it to the output
    (``filter_canvas``): the resize after a rotate of the written order."""
    source = dali_shape(images)
    total, shape = fused_map(steps, source)
    if total is None:  # no turn, no flip drawn, nothing resampled: the image as decoded
        return images
    if not any(op.resamples for op in steps):  # shifts, turns and mirrors keep the scale: nothing to filter
        return _warp(images, source, total, shape, device)
    canvas, total = filter_canvas(total, shape)
    # Where a sample's canvas is the output itself, this resize is a copy: one pass more for that image.
    return fn.resize(_warp(images, source, total, canvas, device), device=device, resize_x=shape[1],
                     resize_y=shape[0], interp_type=types.INTERP_LINEAR, antialias=True)


def fused_map(steps: tuple[Op, ...], source):
    """The product of ``steps``' pieces for an input of ``source`` (height, width) pixels, per-sample
    nodes or numbers: a DALI (2, 3) transform node in pixel-corner coordinates (None: the identity) from
    source to output, and the output's (height, width)."""
    total, shape = None, source
    for op in steps:
        if not callable(getattr(op, "dali_warp", None)):
            raise TypeError(f"the DALI backend has no warp form (dali_warp) of {op!r}")
        total, shape = op.dali_warp(total, shape)
    return total, shape


def _warp(images, source, matrix, size, device: str):
    """One bilinear warp of ``images`` of ``source`` (height, width) by ``matrix`` (source to output, in
    DALI's pixel-corner coordinates) into ``size`` (height, width) pixels; black outside the source."""
    size = _sizes(size, types.FLOAT)
    if device == "gpu":
        return fn.warp_affine(images, device=device, matrix=matrix, size=size, fill_value=0, inverse_map=False,
                              interp_type=types.INTERP_LINEAR)
    # On the CPU a fill value doubles the warp's cost (DALI 2.4: 90 against 46 ns per output pixel). A black
    # one-pixel frame around the source, which the border-clamping warp repeats outward, is the same fill.
    framed = fn.slice(images, start=[-1, -1], shape=_sizes((side + 2 for side in source), types.INT32),
                      axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
    matrix = fn.transforms.translation(matrix, offset=[-1.0, -1.0], reverse_order=True)  # framed -> source first
    return fn.warp_affine(framed, device=device, matrix=matrix, size=size, inverse_map=False,
                          interp_type=types.INTERP_LINEAR)


def _sizes(sides, dtype):
    """(height, width) as an operator's shape argument: a list where both are numbers, else a per-sample node."""
    sides = tuple(sides)
    if all(isinstance(side, int) for side in sides):
        return [float(side) if dtype == types.FLOAT else side for side in sides]
    return fn.stack(*(fn.cast(side, dtype=dtype) for side in sides))


# affine.filter_canvas works in float64; DALI's arithmetic in float32, whose rounding near 500 px (3e-5)
# would push an exact product such as 224 x 2.0 over the integer (one pixel more canvas).
_CEIL_SLACK = 1e-3


def filter_canvas(total, out):
    """``affine.filter_canvas`` per sample, in DALI arithmetic: the canvas (height, width), the output itself
    where the map ``total`` shrinks by at most ``affine.FILTER_ABOVE`` along both output axes, and the map
    into it.

    The canvas is the output's frame at the image's own scale, not capped at ``affine.CANVAS_MOST`` as the
    host's: the host first decodes at a libjpeg DCT scale, which DALI's decoders lack, and a bilinear warp
    into a capped canvas aliases what that decode filters away (fine-detail 1024x768 photos, Rotate,
    Resize to 224x224: 32 dB PSNR against PIL step by step, where this canvas scores 50).
    """
    a, b, d, e = total[0, 0], total[0, 1], total[1, 0], total[1, 1]
    det = dali_math.abs(a * e - b * d)
    # affine.spread: input pixels per output pixel along the output's axes (the inverse's column lengths).
    spread = (dali_math.sqrt(a * a + b * b) / det, dali_math.sqrt(d * d + e * e) / det)
    filtered = dali_math.max(*spread) > affine.FILTER_ABOVE
    canvas = tuple(side + filtered * (dali_math.max(side, dali_math.ceil(side * gain - _CEIL_SLACK)) - side)
                   for side, gain in zip(out, spread))
    return canvas, fn.transforms.scale(total, scale=fn.stack(canvas[1] / out[1], canvas[0] / out[0]))


@pipeline_def
def feed_pipeline(files, labels, steps, fused, decoder, shard_id, num_shards, shuffle, shuffle_seed):
    """Read this shard's files in this epoch's order; decode and augment them. Pipeline arguments
    (``enable_checkpointing``, ``checkpoint``, ``num_threads``, ...) are ``pipeline_def``'s."""
    encoded, labels = fn.readers.file(
        files=files,
        labels=labels,
        name=READER,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle_after_epoch=shuffle,
        shuffle_after_epoch_seed=shuffle_seed if shuffle else None,  # DALI complains if set unused
        # Without shuffling, each shard keeps its own slice every epoch (DALI would
        # otherwise move to the next shard); shuffle_after_epoch implies it.
        stick_to_shard=not shuffle,
        pad_last_batch=True,
    )
    return process_images(encoded, steps, decoder, fused), labels
