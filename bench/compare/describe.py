"""What each compare row does, in words, and how faithful its picture is: like is compared with like.

A rate means little without the work behind it: each row says its op order, its
antialiasing, its output dtype and where Normalize runs, and carries its PSNR
against the written order's antialiased reference (``bench.fidelity``), measured on
files of the data itself with the spec's draws pinned (``bench.fidelity.pinned``), so
that rows drawing from random sources of their own run the same augmentation.
"""
from __future__ import annotations

import numpy as np

from bench.compare.config import DECODE_ONLY, LITERAL, NAIVE
from bench.compare.reference import naive_description
from feeding.spec import AugSpec

FIDELITY_FILES = 16  # files spread over the data; each row decodes and augments them once
TARGET_DB = (38.0, 33.0)  # median, worst: the fidelity target on photographs with fine detail
_FIDELITY_ROW = {NAIVE: "naive torchvision", "pil": "feedbench pil", "albumentations": "feedbench albumentations",
                 "dali": "dali", LITERAL: "feedbench pil, literal order"}
_ON_DEVICE = "uint8 out (NHWC memory, channels_last), Normalize on the training device"


def row_does(name: str, spec: AugSpec) -> str:
    """One row's work in words (user loaders: as given)."""
    from feeding.backends.albu import AlbumentationsTransform
    from feeding.backends.pil import PilTransform
    from feeding.plan import make_plan

    if name == NAIVE:
        return (f"{naive_description(spec)}, on the full-size image in the written order; float32 out, "
                "ToTensor and Normalize in the workers, default_collate")
    if name == DECODE_ONLY:
        return "full-size decode only, no augmentation: the limit; the pixels are dropped"
    if name == LITERAL:
        return f"PIL, one call per op in the written order (the reference's own work); {_ON_DEVICE}"
    if name == "pil":
        return f"{PilTransform(make_plan(spec), 2**27).describe_steps()}; {_ON_DEVICE}"
    if name == "albumentations":
        transform = AlbumentationsTransform(make_plan(spec), 2**27)
        try:
            return f"{transform.describe_steps()}; {_ON_DEVICE}"
        finally:
            transform.close()
    if name == "dali":
        return f"DALI on the CPU: its decoder, the plan's steps as DALI operators; {_ON_DEVICE}"
    return "the user's loader, as given"


def row_fidelity(paths: np.ndarray, spec: AugSpec, names: list[str]) -> dict:
    """{row name: {median_db, worst_db, images} or {skipped}} for the rows that have a fidelity measure,
    on ``FIDELITY_FILES`` files spread over ``paths``, with the spec's draws pinned."""
    from bench import fidelity

    step = max(1, len(paths) // FIDELITY_FILES)
    files = [str(path) for path in paths[::step][:FIDELITY_FILES]]
    wanted = {_FIDELITY_ROW[name]: name for name in names if name in _FIDELITY_ROW}
    scored = fidelity.measure(files, fidelity.pinned(spec), names=tuple(wanted))
    return {wanted[entry["row"]]: {k: v for k, v in entry.items() if k not in ("row", "does")} for entry in scored}


def meets_target(score: dict | None) -> bool | None:
    """Whether a row's fidelity meets ``TARGET_DB``; None where it was not scored."""
    if not score or "median_db" not in score:
        return None
    return score["median_db"] >= TARGET_DB[0] and score["worst_db"] >= TARGET_DB[1]
