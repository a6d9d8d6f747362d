"""Decide how a spec's ops run: which leading steps one warp does, and decode-time downscaling.

Pure functions only. The plan keeps the order the spec wrote: in one fused warp
(``feeding.affine``) the order costs nothing, since a rotation before a resize is
one matrix product, as cheap as after it, and the product of the written order is
that order's own picture. Moving a rotation after an anisotropic resize would
rotate the squashed image, a shear in the photo's frame (up to 13 degrees on
384x512 -> 224x224 at 10 degrees), so the planner moves nothing unless told to:
``reorder=True`` (``--reorder``) runs the shrinking ops first, as cheap as
step by step can be, and ``describe`` says what moved and that the picture changes.

``literal=True`` runs the written order step by step, no fused warp: the
reference whose cost the fast paths are measured against.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from feeding import affine
from feeding.affine import fusable_prefix
from feeding.ops import Op, Shape
from feeding.spec import AugSpec

# Decode-time reduction factors that libjpeg (PIL draft, OpenCV IMREAD_REDUCED_*) offers.
DECODE_REDUCTIONS = (8, 4, 2)


def _rank(op: Op) -> int:
    """Shrinkers first, then geometry (what a warp can do: rotate, flip) at the small size, then per-pixel colour."""
    if op.reduces:
        return 0
    if op.warp_role is not None:
        return 1
    return 2


@dataclass(frozen=True)
class Plan:
    """Host ops in execution order, with the decision rules that go with them."""

    steps: tuple[Op, ...]
    literal: bool
    output_size: Shape
    fuse: bool = True  # may the leading geometric steps run as one warp?
    written: tuple[Op, ...] = ()  # the spec's own order, where ``steps`` moved some (reorder=True)

    @property
    def reordered(self) -> bool:
        """True where the steps do not run in the written order (the picture then differs)."""
        return bool(self.written) and self.written != self.steps

    def moved(self) -> list[str]:
        """What the reordering moved, in words ("Rotate after Resize"), for describe() and reports."""
        if not self.reordered:
            return []
        position = {id(op): i for i, op in enumerate(self.steps)}
        words = []
        for i, op in enumerate(self.written):
            for later in self.written[i + 1:]:
                if position[id(later)] < position[id(op)]:
                    words.append(f"{type(op).__name__} after {type(later).__name__}")
        return words

    @property
    def first_resamples(self) -> bool:
        """True when the first step resamples the whole image (decode reduction helps)."""
        return bool(self.steps) and self.steps[0].resamples

    def costs(self, source: Shape) -> list[tuple[str, Shape, float]]:
        """(op name, output shape, cost in megapixel-units) for each step."""
        rows, shape = [], source
        for op in self.steps:
            out = op.out_shape(shape)
            touched = max(shape[0] * shape[1], out[0] * out[1]) if op.reduces else out[0] * out[1]
            rows.append((type(op).__name__, out, op.relative_cost * touched / 1e6))
            shape = out
        return rows

    def total_cost(self, source: Shape) -> float:
        return sum(cost for _, _, cost in self.costs(source))

    def describe(self, source: Shape | None = None) -> str:
        """A readable account of the plan, for ``--show-plan`` and logs."""
        if self.literal:
            order = "the written order, step by step (no fused warp)"
        elif self.reordered:
            order = (f"reordered (--reorder): {', '.join(self.moved())}; the picture differs from the "
                     "written order's")
        else:
            order = "the written order"
        lines = [f"plan: {order}, output {self.output_size[0]}x{self.output_size[1]} uint8"]
        if source is None:
            lines += [f"  {i + 1}. {op}" for i, op in enumerate(self.steps)]
            return "\n".join(lines)
        if self.fused_steps:
            lines += self._describe_warp(source)
            shape, first = self.fused_output(source), self.fused_steps
        else:
            factor = self.decode_reduction(source) if self.first_resamples else 1
            lines.append(f"  0. decode {source[0]}x{source[1]}"
                         + (f" at 1/{factor} (decode-time downscale)" if factor > 1 else " at full size"))
            shape, first = (math.ceil(source[0] / factor), math.ceil(source[1] / factor)), 0
        rest = Plan(self.steps[first:], literal=True, output_size=self.output_size, fuse=False)
        for i, (name, out, cost) in enumerate(rest.costs(shape), start=first + 1):
            lines.append(f"  {i}. {name:<18} -> {out[0]}x{out[1]}  cost {cost:.3f}")
        return "\n".join(lines)

    def fused_output(self, source: Shape) -> Shape:
        return affine.fused_shape(self.steps[:self.fused_steps], source)

    def _describe_warp(self, source: Shape) -> list[str]:
        """The decode and the one warp, for an example draw of the random steps (seed 0)."""
        steps = self.steps[:self.fused_steps]
        piece, out = affine.draw_warp(steps, source, np.random.default_rng(0))
        eighths, decoded = affine.jpeg_scale(source, affine.decode_floor(piece, source))
        scale = (f"at 1/{8 // eighths} (libjpeg DCT scaling) -> {decoded[0]}x{decoded[1]}" if eighths < 8
                 else "at full size")
        local = affine.then(affine.from_decoded(decoded, source), piece)
        gy, gx = affine.spread(local)
        canvas = affine.filter_canvas(local, out)
        names = ", ".join(type(op).__name__ for op in steps)
        lines = [f"  0. decode {source[0]}x{source[1]} {scale}"]
        example = " (one example draw)" if any(op.is_random for op in steps) else ""
        whose = "these steps'" if self.reordered else "the written order's"
        if affine.axis_box(local, decoded, out) is not None:
            lines.append(f"  1-{len(steps)}. {names}: one antialiased crop-and-resize -> {out[0]}x{out[1]} "
                         f"(no rotation: no warp){example}")
        elif canvas is None:
            lines.append(f"  1-{len(steps)}. {names}: one affine warp, {whose} matrix -> {out[0]}x{out[1]}{example}")
        else:
            lines.append(f"  1-{len(steps)}. {names}: one affine warp, {whose} matrix, into a {canvas[0]}x{canvas[1]} "
                         f"canvas at the image's scale{example}")
            lines.append(f"     antialiased resize -> {out[0]}x{out[1]} (a {gy:.2f}x{gx:.2f} shrink)")
        return lines

    @functools.cached_property  # asked several times per image; the plan is frozen
    def fused_steps(self) -> int:
        """How many leading steps run as one affine map (0: none). A lone resize or crop is one too: its
        box is drawn before the decode, which then runs at the DCT scale it needs, and without a rotation
        the map runs as one antialiased crop-and-resize (``affine.axis_box``), not as a warp."""
        return fusable_prefix(self.steps) if self.fuse else 0

    def decode_reduction(self, source: Shape, region: Shape | None = None) -> int:
        """Largest libjpeg reduction that keeps ``region`` (default: whole source) >= the first step's output.

        That output is the size this image is resized to, which a shorter-side
        Resize takes from the image's aspect ratio, and which a crop after the
        resize may make larger than the plan's output size.
        """
        if not self.first_resamples:
            return 1
        return reduction_factor(region or source, self.steps[0].out_shape(source))


def make_plan(spec: AugSpec, literal: bool = False, fuse: bool | None = None, reorder: bool = False) -> Plan:
    """The plan of ``spec``'s host ops in the written order. ``fuse`` defaults to ``not literal``;
    ``reorder``: shrinking ops first (stable within each cost rank), which changes the picture."""
    if literal and reorder:
        raise ValueError("literal=True runs the written order; it cannot also reorder")
    ops = spec.host_ops
    steps = tuple(sorted(ops, key=_rank)) if reorder else ops
    return Plan(steps=steps, literal=literal, output_size=spec.output_size,
                fuse=(not literal) if fuse is None else fuse, written=ops if reorder else ())


def reduction_factor(region: Shape, target: Shape) -> int:
    """Largest factor f in (8, 4, 2) with region/f >= target on both axes, else 1.

    Used only when the target is at most half the region, so a decode at 1/f
    loses nothing that the following antialiased resize would have kept.
    """
    for f in DECODE_REDUCTIONS:
        if region[0] / f >= target[0] and region[1] / f >= target[1]:
            return f
    return 1


__all__ = ["DECODE_REDUCTIONS", "Plan", "make_plan", "reduction_factor"]
