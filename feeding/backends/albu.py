"""The albumentations backend: OpenCV decode, plan steps as albumentations transforms (``Op.albumentations``).

OpenCV runs single-threaded in the workers and, while a transform is open, in the
main process (whose setting worker threads share): with N workers on N cores its
thread pool would only oversubscribe the cores, and a pool started in the parent
does not survive ``fork``: a forked worker that touches it waits forever. Closing
the transform gives the main process its own thread count back.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from feeding import affine, decode
from feeding.backends.host import HostTransform
from feeding.errors import MissingDependencyError
from feeding.ops import resize_to
from feeding.plan import Plan


def _import():
    try:
        import albumentations
        import cv2
    except ImportError as error:
        raise MissingDependencyError(
            "the albumentations pipeline needs albumentations and OpenCV: "
            "pip install 'albumentations>=2.0,<2.1' opencv-python-headless"
        ) from error
    return albumentations, cv2


class SingleThreadedOpenCV:
    """OpenCV's thread count in this process: 1 while anyone holds it, and what it was once the last lets go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._before: int | None = None  # the count when the first holder came

    def hold(self) -> None:
        _, cv2 = _import()
        with self._lock:
            if self._holders == 0:
                self._before = cv2.getNumThreads()
            self._holders += 1
            cv2.setNumThreads(1)

    def release(self) -> None:
        _, cv2 = _import()
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._before is not None:
                cv2.setNumThreads(self._before)
                self._before = None


MAIN_PROCESS_OPENCV = SingleThreadedOpenCV()


def antialiased_shrink(image: np.ndarray, out, box=None) -> np.ndarray:
    """PIL's antialiased bilinear resize (pillow-simd's SIMD code, outside the GIL) of an HxWx3 or RGBX
    HxWx4 uint8 array to ``out`` (height, width). Not OpenCV's INTER_AREA: a box filter, it scored 30 dB
    against PIL's triangle on fine stripes where this scores 47, and at 512x384 -> 224x224 it took 4x as long
    (tests/benchmarks, group "antialiased shrink"). The array is wrapped, not copied. ``box``: the
    (left, top, right, bottom) region to stretch onto ``out``, in pixel-edge units (default: all of it)."""
    from PIL import Image

    mode = "RGBX" if image.shape[2] == 4 else "RGB"  # not RGBA: PIL would premultiply by the padding byte
    wrapped = Image.frombuffer(mode, (image.shape[1], image.shape[0]), image, "raw", mode, 0, 1)
    return np.asarray(wrapped.resize((out[1], out[0]), Image.BILINEAR, box=box))


def _has_opencv_form(op) -> bool:
    return callable(getattr(op, "opencv", None))


def compile_albumentations(plan: Plan, start: int | None = None):
    """An ``A.Compose`` that runs the plan's steps from ``start`` (default: after the fused prefix), in order."""
    A, _ = _import()
    steps = plan.steps[plan.fused_steps if start is None else start:]
    return A.Compose([transform for op in steps for transform in op.albumentations()], seed=0)


class AlbumentationsTransform(HostTransform):
    def __init__(self, plan: Plan, max_pixels: int) -> None:
        super().__init__(plan, max_pixels)
        first = plan.steps[0]
        # The steps run here before albumentations: the fused warp, or a leading shorter-side resize,
        # which must be sized from the source and not from a reduced decode.
        self.head = plan.fused_steps or int(first.keeps_aspect)
        # A random region is drawn inside albumentations, after the decode: only a fixed one can be reduced for.
        self.reduces_unfused = plan.first_resamples and not first.is_random
        # After the warp, ops with an OpenCV uint8 form (ColorJitter: lookup tables) run as our own calls,
        # drawing from the batch's stream as the PIL backend does; any other op hands the rest to albumentations.
        tail = plan.steps[self.head:]
        self.opencv_tail = tail if plan.fused_steps and all(_has_opencv_form(op) for op in tail) else ()
        self.compose = compile_albumentations(plan, self.head + len(self.opencv_tail))
        # Every step is ours: decode, warpAffine, lookup tables, and nothing for albumentations.
        self.fully_fused = plan.fused_steps > 0 and not self.compose.transforms
        self._scratch = decode.Scratch()  # the fully fused path decodes and warps into reused memory
        self._warped: np.ndarray | None = None
        self._opencv_hold: weakref.finalize | None = None
        self.setup_worker(in_worker=False)  # before any worker is forked

    def setup_worker(self, in_worker: bool) -> None:
        """Single-threaded OpenCV: a worker process sets its own; in the main process the transform holds the
        setting until ``close`` (idempotent: a feeder may call it again when it restarts its workers)."""
        if in_worker:
            _, cv2 = _import()
            cv2.setNumThreads(1)
        elif self._opencv_hold is None or not self._opencv_hold.alive:
            MAIN_PROCESS_OPENCV.hold()
            # Released by close(), or when the transform is collected unclosed; never at exit,
            # where worker threads may still be inside OpenCV.
            self._opencv_hold = weakref.finalize(self, MAIN_PROCESS_OPENCV.release)
            self._opencv_hold.atexit = False

    def close(self) -> None:
        """Give the main process its OpenCV thread count back (once no other open transform holds it)."""
        if self._opencv_hold is not None:
            self._opencv_hold()

    @property
    def releases_gil(self) -> bool:
        # Fully fused: libjpeg-turbo/OpenCV decode and one warpAffine, both outside the GIL.
        # Albumentations' own per-image Python would hold it (measured in tests/benchmarks).
        return self.fully_fused

    def gil_holders(self) -> str:
        steps = self.plan.steps[self.head + len(self.opencv_tail):]
        names = ", ".join(type(op).__name__ for op in steps) or "the decode"
        return f"albumentations' per-image Python ({names}: outside the fast path)"

    def describe_steps(self) -> str:
        """Which code runs each plan step, for --show-plan: what the fast path covers and what it does not."""
        steps, parts = self.plan.steps, []
        fused = steps[:self.plan.fused_steps]
        if any(op.warp_role in affine.REVEALS for op in fused):
            parts.append(f"steps 1-{len(fused)}: one OpenCV warpAffine (+ PIL's antialiased resize where it "
                         "shrinks), GIL released")
        elif fused:
            parts.append(f"steps 1-{len(fused)}: one PIL antialiased crop-and-resize (no rotation, no warp), "
                         "GIL released")
        elif self.head:
            parts.append("step 1: an OpenCV area resize, GIL released")
        for op in self.opencv_tail:
            parts.append(f"step {steps.index(op) + 1} {type(op).__name__}: OpenCV lookup tables, GIL released")
        rest = steps[self.head + len(self.opencv_tail):]
        if rest:
            first = len(steps) - len(rest) + 1
            parts.append(f"steps {first}-{len(steps)} ({', '.join(type(op).__name__ for op in rest)}): "
                         "albumentations, Python holding the GIL")
        return "; ".join(parts)

    def write(self, image: np.ndarray, out: np.ndarray) -> None:
        if image.shape[2] == 4:  # RGBX from the fused warp: drop the padding while copying
            _, cv2 = _import()
            cv2.cvtColor(image, cv2.COLOR_RGBA2RGB, dst=out)
        else:
            out[...] = image

    def clone(self) -> "AlbumentationsTransform":
        twin = super().clone()
        twin.compose = compile_albumentations(self.plan, self.head + len(self.opencv_tail))  # per-thread generators
        twin._scratch, twin._warped = decode.Scratch(), None  # so is the memory decoded and warped into
        return twin

    def __getstate__(self) -> dict:
        # A copy (a thread's clone, a pickled transform) does not hold this process's OpenCV setting:
        # threads share the one the original holds, and another process sets its own.
        return {**self.__dict__, "_opencv_hold": None}

    def start_batch(self, rng: np.random.Generator) -> None:
        # albumentations draws from its own generators: seed them from a child of the batch's
        # stream (spawning does not advance it, so our own draws stay those of the other backends).
        self.compose.set_random_seed(int(rng.spawn(1)[0].integers(2**31)))

    def decode(self, path: str, data: bytes, rng: np.random.Generator):
        """The decoded image (reduced where the plan allows), its source size, and for a fused warp its map
        (drawn first: how much the warp shrinks decides the DCT scale the JPEG is decoded at)."""
        found = decode.header(path, self.max_pixels, data)  # read once: the decode reuses it
        if self.plan.fused_steps:
            drawn = affine.draw_warp(self.plan.steps[:self.plan.fused_steps], found.size, rng)
            fully = self.fully_fused  # then the warp consumes the pixels at once: scratch memory is safe
            image = decode.load_cv2(path, self.max_pixels, data=data, known=found, rgbx=fully,  # RGBX: faster warp
                                    scratch=self._scratch if fully else None,
                                    at_least=affine.decode_floor(drawn[0], found.size))
            return image, found.size, drawn
        reduction = self.plan.decode_reduction(found.size) if self.reduces_unfused else 1
        return decode.load_cv2(path, self.max_pixels, reduction=reduction, data=data, known=found), found.size, None

    def augment(self, decoded, rng: np.random.Generator) -> np.ndarray:
        image, source, drawn = decoded
        if self.plan.fused_steps:
            image = self._warp(image, source, *drawn)
        elif self.head:
            image = resize_to(image, self.plan.steps[0].out_shape(source))
        for op in self.opencv_tail:
            image = op.opencv(image, op.draw(image.shape[:2], rng))
        return self.compose(image=image)["image"] if self.compose.transforms else image

    def _warp(self, image: np.ndarray, source, piece: affine.Affine, out) -> np.ndarray:
        """One warpAffine of the fused map; where it shrinks, into a canvas at the image's own scale that an
        antialiased resize then shrinks to the output (the filtering a resize after a rotate gives)."""
        _, cv2 = _import()
        piece = affine.then(affine.from_decoded(image.shape[:2], source), piece)
        aligned = affine.axis_box(piece, image.shape[:2], out)
        if aligned is not None:  # no rotation: one antialiased crop-and-resize, no warp
            box, mirrored = aligned
            image = antialiased_shrink(image, out, box)
            return cv2.flip(image, 1) if mirrored else image
        canvas = affine.filter_canvas(piece, out)
        size = canvas or out
        if canvas is not None:
            piece = affine.then(piece, affine.resize_piece(affine.whole(out), canvas))
        warped = cv2.warpAffine(image, affine.as_matrix(piece)[:2], (size[1], size[0]),
                                dst=self._warp_target(image, *size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        return warped if canvas is None else antialiased_shrink(warped, out)

    def _warp_target(self, source: np.ndarray, height: int, width: int) -> np.ndarray | None:
        """Reused output memory for the fully fused warp (``write`` copies it out at once)."""
        if not self.fully_fused:
            return None
        shape = (height, width, source.shape[2])
        if self._warped is None or self._warped.shape != shape:
            self._warped = np.empty(shape, dtype=np.uint8)
        return self._warped
