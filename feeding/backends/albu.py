"""The albumentations backend: OpenCV decode, plan steps as albumentations transforms.

OpenCV runs single-threaded, in the workers and in the main process alike.
With N workers on N cores its thread pool would only oversubscribe the cores,
and a pool started in the parent does not survive ``fork``: a forked worker
that touches it waits forever.
"""
from __future__ import annotations

import numpy as np

from feeding import decode
from feeding.backends.host import HostTransform
from feeding.errors import MissingDependencyError
from feeding.plan import Plan
from feeding.spec import CenterCrop, ColorJitter, HorizontalFlip, RandomResizedCrop, Resize, Rotate


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


def compile_albumentations(plan: Plan):
    """An ``A.Compose`` that runs the plan's steps, in the plan's order."""
    A, cv2 = _import()
    transforms = []
    for op in plan.steps:
        if isinstance(op, Resize):
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
        self.compose = compile_albumentations(plan)
        self.setup_worker(in_worker=False)  # before any worker is forked

    def setup_worker(self, in_worker: bool) -> None:
        _, cv2 = _import()
        cv2.setNumThreads(1)

    def start_batch(self, rng: np.random.Generator) -> None:
        # albumentations draws from its own generators; seed them from the batch's stream.
        self.compose.set_random_seed(int(rng.integers(2**31)))

    def decode(self, path: str, data: bytes, rng: np.random.Generator) -> np.ndarray:
        reduction = 1
        if isinstance(self.plan.steps[0], Resize):  # a random crop's box is drawn inside albumentations
            reduction = self.plan.decode_reduction(decode.probe(path, self.max_pixels, data))
        return decode.load_cv2(path, self.max_pixels, reduction=reduction, data=data)

    def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.compose(image=image)["image"]
