"""`feedbench --pipeline ray` next to the torch DataLoader pipeline, alternating, in one run.

    .venv/bin/python scripts/ray_vs_dataloader.py [ROUNDS] [OUT_DIR]

Each round runs ``feedbench --pipeline ray --workers 2`` (2 Ray Data actors on a
local Ray) and ``feedbench --pipeline albumentations --executor process --workers 2``
(the same transform in 2 DataLoader worker processes), in alternating order, so both
see the machine's slow and fast spells. The rates are the timed images over the timed
seconds of each run (the ray pipeline delivers in bursts; see bench/measure.py).
Writes OUT_DIR/ray-vs-dataloader-<cores>c.md (default results/).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from feeding.io import write_atomic

RUNS = {
    "ray (Ray Data, 2 actors)": ["--pipeline", "ray", "--workers", "2"],
    "DataLoader (2 worker processes)": ["--pipeline", "albumentations", "--executor", "process", "--workers", "2"],
}
COMMON = ["--batch", "64", "--batches", "20", "--repeats", "3"]


def run(args: list[str], scratch: Path) -> float:
    """One ``feedbench`` run with ``args``; its timed images over its timed seconds (img/s)."""
    out = scratch / "run.json"
    feedbench = Path(sys.executable).with_name("feedbench")
    subprocess.run([str(feedbench), *args, *COMMON, "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["overall_images_per_sec"]


def main(rounds: int, out_dir: Path) -> Path:
    """``rounds`` alternating rounds of both runs; the Markdown table written under ``out_dir``."""
    rates: dict[str, list[float]] = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(rounds):
            order = list(RUNS) if number % 2 == 0 else list(reversed(RUNS))
            for name in order:
                rates[name].append(run(RUNS[name], Path(scratch)))
                print(f"round {number + 1}: {name}: {rates[name][-1]:.0f} img/s", file=sys.stderr)
    from bench.provenance import provenance

    made = provenance()
    lines = [f"# `feedbench --pipeline ray` against the torch DataLoader, {os.cpu_count()} cores", "",
             f"`python scripts/ray_vs_dataloader.py {rounds}`: sample data, 224x224, batch 64, "
             f"{rounds} alternating rounds; img/s = timed images / timed seconds of each run.  ",
             f"Machine: {made['machine']['cpu']}, {made['machine']['cores']} cores; commit {made['commit']['id']} "
             f"(dirty: {made['commit']['dirty']}), {made['created']}", "",
             "| pipeline | median img/s | min | max | rounds |", "|---|---:|---:|---:|---|"]
    for name, values in rates.items():
        lines.append(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} | "
                     + ", ".join(f"{v:.0f}" for v in values) + " |")
    # Atomic: a run cut short leaves the previous file.
    return write_atomic(out_dir / f"ray-vs-dataloader-{os.cpu_count()}c.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, Path(sys.argv[2] if len(sys.argv) > 2 else "results")))
