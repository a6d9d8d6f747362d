"""A feeder's state: where its stream stands, and what makes that stream, to refuse a foreign state.

Every batch's order and augmentation draws derive from (seed, epoch, batch number)
(``feeding.seeding``), so where a feeder stands is two integers: the epoch and the
batches of it already delivered. A restored feeder starts its next batch there and
delivers what the original would have, pixel for pixel, without decoding the batches
before it; the worker count is free to change, since no stream depends on it.

What the numbers mean depends on the stream they count in: the data set, the spec, the
batch size, the seed, the shuffle, the shard. The state carries those as a fingerprint,
and ``check_state`` refuses a state made under another with one line naming what differs,
never a silent restart from zero. Pure functions only.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from feeding.errors import FeedError

STATE_FORMAT = 1  # bumped when a state's meaning changes; a newer one is refused, an older one read


class FeederStateError(FeedError):
    """A feeder state that does not belong to this feeder: another data set, spec, batch size or seed,
    another backend's, a newer format's, or not a state at all."""


def data_digest(paths, labels, root: str | None = None) -> str:
    """sha256 (16 hex digits) of the samples in order, paths relative to ``root`` (the same on any machine),
    with their labels: the order a sampler permutes, so a reordered or relabelled data set differs."""
    base = Path(root) if root else None
    if base is not None and base.is_file():
        base = base.parent
    # What os.path.relpath gives for a path under the root, without re-normalizing the root for each path
    # (~35 us a path: 45 s for ImageNet's 1.28M, at every state_dict() and load_state_dict()).
    under = os.path.join(os.path.abspath(base), "") if base is not None else None
    digest = hashlib.sha256()
    for path in np.asarray(paths).tolist():
        if under is not None:
            normal = os.path.abspath(path)
            path = normal[len(under):] if normal.startswith(under) else os.path.relpath(normal, base)
        digest.update(str(path).encode())
        digest.update(b"\n")
    digest.update(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())
    return digest.hexdigest()[:16]


def stream_fingerprint(samples, config, spec_record) -> dict:
    """What decides a feeder's stream, as JSON-safe values (``config``: a ``FeedConfig``; ``spec_record``:
    its spec as ``feeding.spec_file.spec_record`` writes it). The worker count and executor are not in it.
    Nor are ``on_bad``, ``max_pixels`` and the decode device: up to the file where they matter they change
    no batch, and changing one is how a run is resumed past the file that stopped it (``on_bad="fail"``,
    an image over ``max_pixels``) or on a machine without the GPU that decoded before."""
    return {
        "pipeline": config.pipeline,
        "data": data_digest(samples.paths, samples.labels, str(samples.root) if samples.root else None),
        "images": len(samples),
        "spec": json.dumps(spec_record, sort_keys=True),
        "batch_size": config.batch_size,
        "seed": config.seed,
        "shuffle": config.shuffle,
        "drop_last": config.drop_last,
        "shard": [config.shard_id, config.num_shards],
        "plan": [config.literal_order, config.fast_paths, config.reorder],  # each changes the pixels
    }


_WORDS = {"pipeline": "pipeline", "data": "data set (its files and labels, in order)", "images": "number of images",
          "spec": "augmentation spec", "batch_size": "batch size", "seed": "seed", "shuffle": "shuffle",
          "drop_last": "drop_last", "shard": "shard [rank, ranks]",
          "plan": "plan [literal_order, fast_paths, reorder]"}


def _shown(key: str, value) -> str:
    return "(another)" if key in ("spec", "data") else repr(value)


def check_state(state, expected: dict, length: int) -> tuple[int, int]:
    """``state``'s (epoch, batches delivered), after checking it was made by a feeder with the ``expected``
    fingerprint and epochs of ``length`` batches; ``FeederStateError`` naming what differs otherwise."""
    if not isinstance(state, dict) or "format" not in state or "fingerprint" not in state:
        raise FeederStateError("not a feeder state (no format or fingerprint): pass what Feeder.state_dict() returned")
    if not isinstance(state["format"], int) or state["format"] > STATE_FORMAT:
        raise FeederStateError(f"feeder state format {state['format']!r} is newer than this feedbench reads "
                               f"({STATE_FORMAT}): restore it with the version that wrote it")
    found = state["fingerprint"]
    differs = [f"{_WORDS.get(key, key)} {_shown(key, found.get(key))} != {_shown(key, value)}"
               for key, value in expected.items() if found.get(key) != value]
    if differs:
        raise FeederStateError("the feeder state was made for another stream: " + "; ".join(differs)
                               + " (state != this feeder)")
    epoch, batches = state.get("epoch"), state.get("batches")
    if not (isinstance(epoch, int) and isinstance(batches, int) and epoch >= 0 and 0 <= batches <= length):
        raise FeederStateError(f"feeder state position epoch={epoch!r}, batches={batches!r} is not one of this "
                               f"feeder's (epochs of {length} batches)")
    return (epoch + 1, 0) if batches == length and length else (epoch, batches)


def state_record(position: tuple[int, int], fingerprint: dict, length: int, **extra) -> dict:
    """The state of a feeder at ``position`` (epoch, batches delivered), an epoch's end as the next one's start."""
    epoch, batches = position
    if length and batches >= length:
        epoch, batches = epoch + 1, 0
    return {"format": STATE_FORMAT, "epoch": int(epoch), "batches": int(batches), "fingerprint": dict(fingerprint),
            **extra}


__all__ = ["STATE_FORMAT", "FeederStateError", "check_state", "data_digest", "state_record", "stream_fingerprint"]
