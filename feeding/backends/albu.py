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
        self.compose = compile_albumentations(plan, self.head)
        # Every step is in the one warp: decode, warpAffine, and nothing for albumentations.
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

    def write(self, image: np.ndarray, out: np.ndarray) -> None:
        if image.shape[2] == 4:  # RGBX from the fused warp: drop the padding while copying
            _, cv2 = _import()
            cv2.cvtColor(image, cv2.COLOR_RGBA2RGB, dst=out)
        else:
            out[...] = image

    def clone(self) -> "AlbumentationsTransform":
        twin = super().clone()
        twin.compose = compile_albumentations(self.plan, self.head)  # its seeded generators are per thread
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
        """The decoded image (reduced where the plan allows), and for a fused warp its source and box."""
        found = decode.header(path, self.max_pixels, data)  # read once: the decode reuses it
        if self.plan.fused_steps:
            box = self.plan.steps[0].region(found.size, rng)
            reduction = self.plan.decode_reduction(found.size, box[2:])
            fully = self.fully_fused  # then the warp consumes the pixels at once: scratch memory is safe
            image = decode.load_cv2(path, self.max_pixels, reduction=reduction, data=data, known=found,
                                    rgbx=fully, scratch=self._scratch if fully else None)  # RGBX: a faster warp
            return image, found.size, box
        reduction = self.plan.decode_reduction(found.size) if self.reduces_unfused else 1
        return decode.load_cv2(path, self.max_pixels, reduction=reduction, data=data, known=found), found.size, None

    def augment(self, decoded, rng: np.random.Generator) -> np.ndarray:
        image, source, box = decoded
        fused = self.plan.fused_steps
        if fused:
            _, cv2 = _import()
            matrix = affine.warp_matrix(self.plan.steps[:fused], source, box, image.shape[:2], rng)
            height, width = affine.fused_shape(self.plan.steps[:fused], source)
            image = cv2.warpAffine(image, matrix[:2], (width, height), dst=self._warp_target(image, height, width),
                                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        elif self.head:
            image = resize_to(image, self.plan.steps[0].out_shape(source))
        return self.compose(image=image)["image"] if self.compose.transforms else image

    def _warp_target(self, source: np.ndarray, height: int, width: int) -> np.ndarray | None:
        """Reused output memory for the fully fused warp (``write`` copies it out at once)."""
        if not self.fully_fused:
            return None
        shape = (height, width, source.shape[2])
        if self._warped is None or self._warped.shape != shape:
            self._warped = np.empty(shape, dtype=np.uint8)
        return self._warped
