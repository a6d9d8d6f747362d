"""Order a spec's ops by cost and decide decode-time downscaling.

Pure functions only. The planner moves the ops that shrink the image (crop,
resize) ahead of the ops whose cost grows with pixel count (rotate, flip,
colour), so that the expensive ops run on the small image: a rotate at
224x224 touches 4x fewer pixels than at 384x512. Pixel-wise ops commute with
geometry, and rotate/flip about the centre commute with a resize up to
resampling, so the reordered plan delivers the same kind of image.

``literal=True`` keeps the user's order, so the gain can be measured.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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
    fuse: bool = True  # may a crop/resize and the rotates and flips after it run as one warp?

    @property
    def reordered(self) -> bool:
        return not self.literal

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
        order = "literal order (as written)" if self.literal else "planned order (cheap first)"
        lines = [f"plan: {order}, output {self.output_size[0]}x{self.output_size[1]} uint8"]
        if source is None:
            lines += [f"  {i + 1}. {op}" for i, op in enumerate(self.steps)]
            return "\n".join(lines)
        factor = self.decode_reduction(source) if self.first_resamples else 1
        lines.append(
            f"  0. decode {source[0]}x{source[1]}"
            + (f" at 1/{factor} (decode-time downscale)" if factor > 1 else " at full size")
        )
        decoded = (math.ceil(source[0] / factor), math.ceil(source[1] / factor))
        fused = self.fused_steps
        for i, (name, out, cost) in enumerate(self.costs(decoded), start=1):
            note = "  (fused: one affine warp)" if i <= fused else ""
            lines.append(f"  {i}. {name:<18} -> {out[0]}x{out[1]}  cost {cost:.3f}{note}")
        lines.append(f"  total relative cost {self.total_cost(decoded):.3f}")
        return "\n".join(lines)

    @functools.cached_property  # asked several times per image; the plan is frozen
    def fused_steps(self) -> int:
        """How many leading steps run as one affine warp (0: none; a lone resize stays a resize)."""
        count = fusable_prefix(self.steps) if self.fuse else 0
        return count if count >= 2 else 0

    def decode_reduction(self, source: Shape, region: Shape | None = None) -> int:
        """Largest libjpeg reduction that keeps ``region`` (default: whole source) >= the first step's output.

        That output is the size this image is resized to, which a shorter-side
        Resize takes from the image's aspect ratio, and which a crop after the
        resize may make larger than the plan's output size.
        """
        if not self.first_resamples:
            return 1
        return reduction_factor(region or source, self.steps[0].out_shape(source))


def make_plan(spec: AugSpec, literal: bool = False, fuse: bool | None = None) -> Plan:
    """Order ``spec``'s host ops; stable within each cost rank. ``fuse`` defaults to ``not literal``."""
    ops = spec.host_ops
    steps = ops if literal else tuple(sorted(ops, key=_rank))
    return Plan(steps=steps, literal=literal, output_size=spec.output_size,
                fuse=(not literal) if fuse is None else fuse)


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
