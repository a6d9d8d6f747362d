"""The augmentation ops, one class each: its spec, its random draws, its fused-warp piece and its form
in every backend live together (``feeding.ops.base`` says what an op declares and implements).

A new op is one class in one of these modules (geometry, colour; boxes and dali_forms hold the
geometric ops' shared pieces): subclassing ``Op`` registers it,
so the spec accepts it, the planner orders it, and the PIL, albumentations and DALI backends and the
fused warp run it.
"""
from feeding.affine import Box, Shape
from feeding.ops.base import Op
from feeding.ops.geometry import (  # before colour: Op.registry lists the ops in this order
    CenterCrop,
    HorizontalFlip,
    RandomResizedCrop,
    Resize,
    Rotate,
    resize_to,
)
from feeding.ops.boxes import center_box, draw_crop_box, shorter_side_shape, whole
from feeding.ops.colour import IMAGENET_MEAN, IMAGENET_STD, ColorJitter, Normalize

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Box", "CenterCrop", "ColorJitter", "HorizontalFlip", "Normalize",
    "Op", "RandomResizedCrop", "Resize", "Rotate", "Shape", "center_box", "draw_crop_box", "resize_to",
    "shorter_side_shape", "whole",
]
