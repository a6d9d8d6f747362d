"""How long does restoring a feeder to the middle of an epoch take? Against starting the epoch, and replaying to there.

    .venv/bin/python scripts/resume_timing.py [OUT_DIR] [--repeats N] [--people N]

On the 300-person sample (2,100 JPEGs; ``feeding.sample.ensure_sample(people=300)``), 224x224
``train_spec``, batch 64, 2 workers, for pil and albumentations (worker threads and worker processes)
and DALI on the CPU where it is installed. Each is timed three ways, from a feeder just built (its
build is timed apart: the same for all three):

- ``restore``: ``load_state_dict`` of the state after half an epoch's batches, to the first batch
  (the one after them; the batches before are not made);
- ``epoch start``: ``set_epoch`` of the same epoch, to its first batch (the same work, no skip);
- ``replay``: ``set_epoch``, then every batch before that state's, to the batch after them (what a
  feeder without a state would cost to get back there).

Every repeat runs the three in a rotated order, so all share the machine's slow and fast spells; the
tables give median, min and max seconds. The restored first batch is checked against the replay's,
pixel for pixel. Writes OUT_DIR/resume-restore.md/.json (default OUT_DIR: results).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summarize  # noqa: E402
from feeding import FeedConfig, create_feeder, discover  # noqa: E402
from feeding.spec import train_spec  # noqa: E402

SIZE = (224, 224)  # height, width in pixels
BATCH = 64
WORKERS = 2
ROWS = (("pil", "process"), ("albumentations", "thread"), ("albumentations", "process"), ("dali", "auto"))
WAYS = ("restore", "epoch start", "replay")


def feed_config(pipeline: str, executor: str) -> FeedConfig:
    return FeedConfig(pipeline=pipeline, batch_size=BATCH, workers=WORKERS, executor=executor, spec=train_spec(SIZE))


def built(samples, config: FeedConfig):
    """A fresh feeder and the seconds its build took."""
    clock = time.perf_counter()
    feeder = create_feeder(samples, config)
    return feeder, time.perf_counter() - clock


def replay(feeder, skip: int) -> tuple[float, dict, torch.Tensor]:
    """Seconds from ``set_epoch(0)`` to batch number ``skip``, the state after the ``skip`` batches before it,
    and that batch's images."""
    clock = time.perf_counter()
    feeder.set_epoch(0)
    epoch = iter(feeder)
    for _ in range(skip):
        next(epoch)
    state = feeder.state_dict()
    images, _ = next(epoch)
    seconds = time.perf_counter() - clock
    epoch.close()
    return seconds, state, images


def first_batch(feeder, state: dict | None) -> tuple[float, float, torch.Tensor]:
    """Seconds from ``load_state_dict(state)`` (None: ``set_epoch(0)``) to the first batch, the seconds of that
    call alone (checking the state), and the batch's images."""
    clock = time.perf_counter()
    if state is None:
        feeder.set_epoch(0)
    else:
        feeder.load_state_dict(state)
    loaded = time.perf_counter() - clock
    epoch = iter(feeder)
    images, _ = next(epoch)
    seconds = time.perf_counter() - clock
    epoch.close()
    return seconds, loaded, images


def measure_row(samples, pipeline: str, executor: str, repeats: int) -> dict:
    """Each way ``repeats`` times, each on a feeder of its own; the first replay makes the state restored."""
    config = feed_config(pipeline, executor)
    seconds: dict[str, list[float]] = {way: [] for way in (*WAYS, "load_state_dict", "build")}
    state, expected, same, row = None, None, True, {}
    for number in range(repeats):
        order = ("replay", "restore", "epoch start") if state is None else WAYS[number % 3:] + WAYS[:number % 3]
        for way in order:
            feeder, build_s = built(samples, config)
            row = row or {"pipeline": pipeline, "executor": feeder.executor or feeder.capabilities.workers,
                          "workers": WORKERS,
                          "batches_per_epoch": len(feeder)}
            try:
                if way == "replay":
                    taken, state, images = replay(feeder, len(feeder) // 2)
                    expected = images if expected is None else expected
                else:
                    taken, loaded, images = first_batch(feeder, state if way == "restore" else None)
                    if way == "restore":
                        seconds["load_state_dict"].append(loaded)
            finally:
                feeder.close()
            same = same and (way == "epoch start" or torch.equal(images, expected))
            seconds[way].append(taken)
            seconds["build"].append(build_s)
            print(f"{pipeline} {executor} repeat {number + 1}: {way} {taken:.3f} s (build {build_s:.3f} s)",
                  file=sys.stderr, flush=True)
    return {**row, "state": {"epoch": state["epoch"], "batches": state["batches"]}, "same_pixels": bool(same),
            "seconds": {way: {**summarize(values).to_dict(), "values": values} for way, values in seconds.items()}}


def measure(repeats: int, people: int) -> dict:
    from feeding.io import display_path
    from feeding.sample import ensure_sample

    root = ensure_sample(people=people)
    samples = discover(str(root))
    rows = []
    for pipeline, executor in ROWS:
        if pipeline == "dali" and importlib.util.find_spec("nvidia.dali") is None:
            rows.append({"pipeline": pipeline, "executor": executor, "skipped": "nvidia-dali is not installed"})
            continue
        try:
            rows.append(measure_row(samples, pipeline, executor, repeats))
        except Exception as error:  # DALI's restore is its own; a failure there is reported, not hidden
            if pipeline != "dali":
                raise
            print(f"dali: not measured: {type(error).__name__}: {error}", file=sys.stderr)
            rows.append({"pipeline": pipeline, "executor": executor,
                         "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
    return {"data": display_path(root), "images": len(samples), "size": list(SIZE), "batch_size": BATCH,
            "repeats": repeats, "rows": rows}


def _cell(summary: dict) -> str:
    return f"{summary['median']:.3f} ({summary['min']:.3f}-{summary['max']:.3f})"


def markdown(report: dict, command: str) -> str:
    m, commit = report["machine"], report["commit"]
    lines = ["# Restoring a feeder to the middle of an epoch", "", f"`{command}`  ",
             f"{report['images']} images ({report['data']}), {report['size'][0]}x{report['size'][1]} train_spec, "
             f"batch {report['batch_size']}, {report['repeats']} repeats.  ",
             f"Machine: {m['cpu']}, {m['cores']} cores; commit {commit['id']} (dirty: {commit['dirty']}), "
             f"{report['created']}", "",
             "Seconds, median (min-max), each from a feeder just built: **restore** = `load_state_dict` of the "
             "state after half an epoch's batches, to the next batch (the batches before are not made); "
             "**epoch start** = `set_epoch` of that epoch, to its first batch (the same work, no skip); "
             "**replay** = `set_epoch`, then every batch before, to that same next batch. **build** = "
             "`create_feeder`, paid before any of them. **of which load_state_dict**: that call alone, in the "
             "restore. **same pixels**: the restored batch is the replayed one.", "",
             "| pipeline | workers | state (epoch, batches of) | restore s | of which load_state_dict s | "
             "epoch start s | replay s | build s | same pixels |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['pipeline']} | {row['executor']} | not measured: {row['skipped']} | | | | | | |")
            continue
        s, state = row["seconds"], row["state"]
        lines.append(f"| {row['pipeline']} | {row['workers']} {row['executor']} | {state['epoch']}, "
                     f"{state['batches']} of {row['batches_per_epoch']} | **{_cell(s['restore'])}** | "
                     f"{_cell(s['load_state_dict'])} | {_cell(s['epoch start'])} | {_cell(s['replay'])} | "
                     f"{_cell(s['build'])} | "
                     f"{'yes' if row['same_pixels'] else '**no**'} |")
    return "\n".join([*lines, ""])


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results", help="folder for the table (.md) and its .json")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each way, per pipeline (default 5)")
    parser.add_argument("--people", type=int, default=300, help="people in the sample, 7 images each (default 300)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import display_command, provenance
    from feeding.io import write_record_and_table

    args = make_parser().parse_args(argv)
    if args.repeats < 1 or args.people < 1:
        raise SystemExit("--repeats and --people must be at least 1")
    report = {**measure(args.repeats, args.people), **provenance()}
    stem = Path(args.out) / "resume-restore"
    command = display_command("python scripts/resume_timing.py", list(argv if argv is not None else sys.argv[1:]))
    write_record_and_table(stem, report, markdown(report, command))
    print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
