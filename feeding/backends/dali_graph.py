"""The DALI graph: one small ``@pipeline_def`` function around one shared processing function.

It follows DALI's ResNet-50 example: a reader named ``READER`` that the iterator
is pointed at, and ``process_images``, which decodes and runs the plan's steps
(each op's DALI form, ``Op.dali``). Decode runs on ``"cpu"``, or on ``"mixed"``
(nvJPEG / nvImageCodec) when the feeder decodes on a GPU; every later op then runs
on the decoder's side ("cpu" or "gpu"), so both paths are the same graph with the
device chosen.

Decode-time downscale: DALI's decoders have no reduced-scale (libjpeg
``scale_num/scale_denom``) decode, so a Resize-first plan decodes at full size
and resizes (antialiased) afterwards. Only region-of-interest decoding exists:
a first step that has a DALI decode form (``Op.dali_decode``: RandomResizedCrop)
decodes just its window.

Layout: the graph ends in HWC, the layout the decoder and every op work in. The
feeder exposes each batch as an (N, 3, H, W) view of that memory, channels_last
in torch's terms, as the host pipelines deliver theirs: no transpose here that
a channels_last model would undo on the device.
"""
from __future__ import annotations

from feeding.errors import MissingDependencyError
from feeding.ops import Op


def missing_dali(error: ImportError) -> MissingDependencyError:
    """The error for a machine without DALI, naming the package to install."""
    return MissingDependencyError(
        "the 'dali' pipeline needs NVIDIA DALI for CUDA 13 (torch's build): "
        f"pip install nvidia-dali-cuda130  ({error})"
    )


try:
    from nvidia.dali import fn, pipeline_def, types
except ImportError as error:
    raise missing_dali(error) from error

READER = "Reader"
OUTPUTS = ("images", "labels")


def process_images(encoded, steps: tuple[Op, ...], decoder: str):
    """Decode and run the plan's steps; uint8 HWC out. The ops run where the decoder puts the pixels."""
    device = "gpu" if decoder == "mixed" else "cpu"
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


@pipeline_def
def feed_pipeline(files, labels, steps, decoder, shard_id, num_shards, shuffle, shuffle_seed):
    """Read this shard's files in this epoch's order; decode and augment them."""
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
    return process_images(encoded, steps, decoder), labels
