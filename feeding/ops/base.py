"""What an op is: the declarations the planner reads and the methods each backend calls.

An op is a frozen dataclass, validated when built, that subclasses ``Op``. It declares the
(height, width) in pixels it outputs for a given input (``out_shape``), a rough cost per
output pixel (``relative_cost``), whether it shrinks the image (``reduces``), fixes the output
size (``fixes_size``) or draws anything (``is_random``). And it implements itself once for
every backend:

- ``region`` / ``draw``: its parameters for an input of (height, width) pixels, drawn from the
  batch's generator. The PIL backend and the fused warp make the same draws in the same order,
  so a seed gives the same picture on both host backends.
- ``warp``: its 2x3 affine piece (``feeding.affine``) where it can run inside the one fused
  warp; ``warp_role`` says where in a warp it may stand (``feeding.affine.fusable_prefix``).
- ``pil``, ``albumentations``, ``dali``: the step as PIL calls, as albumentations transforms
  (which draw from albumentations' own seeded generators), and as DALI graph nodes.

Subclassing registers the op (``Op.registry``): the spec accepts it, the planner orders it, and
every backend runs it, none of them knowing it by name. Heavy libraries (albumentations, OpenCV,
DALI) are imported inside the methods that use them: importing an op module imports none of them.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from PIL import Image

from feeding.affine import Affine, Box, Shape



class Op:
    """What every op declares, with the defaults of an op that changes pixels but not the image's size."""

    registry: ClassVar[list[type[Op]]] = []  # every op class, in the order defined

    relative_cost = 1.0  # per output pixel, relative to a bilinear resize
    reduces = False  # shrinks the image: the planner runs it first
    fixes_size = False  # its output size does not depend on its input's
    keeps_aspect = False  # its output size follows its input's aspect ratio (a shorter-side resize)
    resamples = False  # resamples what it reads: a decode-time reduction ahead of it saves work
    on_device = False  # runs on the training device after transfer, not in the feeder
    warp_role: str | None = None  # "resize", "window", "crop", "turn" or "mirror"; None: not in a warp
    is_random = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        Op.registry.append(cls)

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def pinned(self) -> "Op":
        """This op with its randomness fixed at one representative draw (the far end of each range, a flip
        always taken): the same augmentation for pipelines that draw from sources of their own, so their
        pictures can be compared (``bench.fidelity``). Deterministic ops return themselves."""
        return self

    def region(self, shape: Shape, rng: np.random.Generator) -> Box | None:
        """The box of its input that a crop or resize reads, drawn now where random; None for other ops.

        A decoder decodes that box at a reduced scale, or only that box (region-of-interest decode).
        """
        return None

    def draw(self, shape: Shape, rng: np.random.Generator):
        """Its parameters for an input of ``shape``, drawn from ``rng`` (by default its region)."""
        return self.region(shape, rng)

    def warp(self, shape: Shape, params) -> Affine | None:
        """Its affine piece for an input of ``shape`` pixels, mapping pixel centres (None: the identity).
        A reduced decode is the warp's business (``feeding.affine.from_decoded``), not the op's."""
        raise TypeError(f"{self!r} has no affine form")

    def pil(self, image: Image.Image, shape: Shape, params) -> Image.Image:
        """The step on a PIL image of ``shape`` (a first step may get a draft-reduced decode of it)."""
        raise self._missing("PIL")

    def albumentations(self) -> list:
        """The albumentations transforms that make this step (none where it changes nothing)."""
        raise self._missing("albumentations")

    def dali(self, images, device: str):
        """The step as DALI nodes on ``device`` ("cpu" or "gpu")."""
        raise self._missing("DALI")

    def dali_decode(self, encoded, decoder: str, device: str):
        """The decode and this step as one DALI node where the decoder can do both, else None."""
        return None

    def dali_mirror(self):
        """The ``mirror`` argument of DALI's final layout change, where this step as the last one
        can fold into it (one pass, not two), else None."""
        return None

    def _missing(self, backend: str) -> TypeError:
        return TypeError(f"the {backend} backend has no implementation of {self!r}")
