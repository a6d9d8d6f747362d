"""The albumentations backend: OpenCV decode, plan steps as albumentations transforms.

OpenCV runs single-threaded, in the workers and in the main process alike.
With N workers on N cores its thread pool would only oversubscribe the cores,
and a pool started in the parent does not survive ``fork``: a forked worker
that touches it waits forever.
"""
from __future__ import annotations

import functools

import numpy as np

from feeding import affine, decode
from feeding.backends.host import HostTransform
from feeding.errors import MissingDependencyError
from feeding.plan import Plan
from feeding.spec import CenterCrop, ColorJitter, HorizontalFlip, RandomResizedCrop, Resize, Rotate, Shape


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


def resize_to(image: np.ndarray, shape: Shape) -> np.ndarray:
    """Resize to (height, width) pixels as ``A.Resize(area_for_downscale="image")`` does: area when shrinking."""
    _, cv2 = _import()
    if shape == image.shape[:2]:
        return image
    shrinks = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)


def _resize_shorter_side(image: np.ndarray, op: Resize, **_params) -> np.ndarray:
    return resize_to(image, op.out_shape(image.shape[:2]))


def _leads_with_shorter_side(plan: Plan) -> bool:
    return not plan.fused_steps and isinstance(plan.steps[0], Resize) and plan.steps[0].keeps_aspect


def compile_albumentations(plan: Plan, start: int | None = None):
    """An ``A.Compose`` that runs the plan's steps from ``start`` (default: after the fused prefix), in order."""
    A, cv2 = _import()
    transforms = []
    for op in plan.steps[plan.fused_steps if start is None else start:]:
        if isinstance(op, Resize) and op.keeps_aspect:
            # albumentations' SmallestMaxSize rounds the longer side to nearest, torchvision truncates.
            transforms.append(A.Lambda(image=functools.partial(_resize_shorter_side, op=op), p=1.0))
        elif isinstance(op, Resize):
            transforms.append(A.Resize(*op.size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image"))
        elif isinstance(op, RandomResizedCrop):
            transforms.append(A.RandomResizedCrop(size=op.size, scale=op.scale, ratio=op.ratio,
                                                  interpolation=cv2.INTER_LINEAR, area_for_downscale="image"))
        elif isinstance(op, CenterCrop):
            transforms.append(A.CenterCrop(*op.size, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0))
        elif isinstance(op, Rotate):
            if op.degrees:
                transforms.append(A.Rotate(limit=(-op.degrees, op.degrees), interpolation=cv2.INTER_LINEAR,
                                           border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0))
        elif isinstance(op, HorizontalFlip):
            if op.p:
                transforms.append(A.HorizontalFlip(p=op.p))
        elif isinstance(op, ColorJitter):
            if op.is_random:
                transforms.append(A.ColorJitter(
                    brightness=(1 - op.brightness, 1 + op.brightness),
                    contrast=(1 - op.contrast, 1 + op.contrast),
                    saturation=(1 - op.saturation, 1 + op.saturation),
                    hue=(0.0, 0.0), p=1.0))
        else:
            raise TypeError(f"the albumentations backend has no implementation of {op!r}")
    return A.Compose(transforms, seed=0)


class AlbumentationsTransform(HostTransform):
    def __init__(self, plan: Plan, max_pixels: int) -> None:
        super().__init__(plan, max_pixels)
        # The steps run here before albumentations: the fused warp, or a leading shorter-side resize,
        # which must be sized from the source and not from a reduced decode.
        self.head = plan.fused_steps or int(_leads_with_shorter_side(plan))
        self.compose = compile_albumentations(plan, self.head)
        # Every step is in the one warp: decode, warpAffine, and nothing for albumentations.
        self.fully_fused = plan.fused_steps > 0 and not self.compose.transforms
        self._scratch = decode.Scratch()  # the fully fused path decodes and warps into reused memory
        self._warped: np.ndarray | None = None
        self.setup_worker(in_worker=False)  # before any worker is forked

    def setup_worker(self, in_worker: bool) -> None:
        _, cv2 = _import()
        cv2.setNumThreads(1)

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

    def start_batch(self, rng: np.random.Generator) -> None:
        # albumentations draws from its own generators: seed them from a child of the batch's
        # stream (spawning does not advance it, so our own draws stay those of the other backends).
        self.compose.set_random_seed(int(rng.spawn(1)[0].integers(2**31)))

    def decode(self, path: str, data: bytes, rng: np.random.Generator):
        """The decoded image (reduced where the plan allows), and for a fused warp its source and box."""
        found = decode.header(path, self.max_pixels, data)  # read once: the decode reuses it
        if self.plan.fused_steps:
            box = affine.first_box(self.plan, found.size, rng)
            reduction = self.plan.decode_reduction(found.size, box[2:])
            fully = self.fully_fused  # then the warp consumes the pixels at once: scratch memory is safe
            image = decode.load_cv2(path, self.max_pixels, reduction=reduction, data=data, known=found,
                                    rgbx=fully, scratch=self._scratch if fully else None)  # RGBX: a faster warp
            return image, found.size, box
        reduction = 1
        if isinstance(self.plan.steps[0], Resize):  # a random crop's box is drawn inside albumentations
            reduction = self.plan.decode_reduction(found.size)
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
