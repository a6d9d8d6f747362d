"""The measuring steps of scripts/gpu_check.sh, one per call, each writing its part as JSON.

    python scripts/gpu_check.py consume --out results/gpu
    python scripts/gpu_check.py feed    --out results/gpu --data DIR
    python scripts/gpu_check.py e2e     --out results/gpu --data DIR
    python scripts/gpu_check.py report  --out results/gpu --steps STEPS.tsv --name NAME

Each measures as ``feedbench tune`` does (``bench.tune.measure``'s feed and consume points), so
that the end-to-end step checks the tuner's forecast where a GPU makes it matter:

- consume: what the model consumes (the step training.fit runs: bf16, channels_last and
  cudnn.benchmark on CUDA), for each model and batch;
- feed: what each pipeline delivers through ``feeding.device.DeviceFeeder`` to the device into a
  consumer that does nothing, for each worker count; each point says whether an epoch outlasted
  the read-ahead (else the windows time batches made before they started);
- e2e: each pipeline's fastest feed point feeding each model's training step in training.fit's
  loop (``training.engine.run_epoch``), against the tuner's forecast from the two
  (``bench.tune.forecast.forecast``);
- report: the parts, the steps' exit status, the tuner's recommendation and fit's verdict, as one
  JSON and a short Markdown.

A point that fails is recorded with its one-line error and the next one runs; a step whose every
point failed exits 1. The defaults are the GPU check's; the flags exist so that the same code can
be run small on a CPU (tests/test_gpu_path.py).
"""
from __future__ import annotations

import argparse
import os
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from feeding import checks, options
from feeding.checks import Shape


@dataclass(frozen=True)
class CheckPlan:
    """What the check measures. Sizes are (height, width) in pixels; ``feed_batch`` is also the
    end-to-end batch (64: an epoch of the 2,100-image sample outlasts 16 workers' read-ahead)."""

    device: str = "cuda"
    size: Shape = (224, 224)
    models: tuple[str, ...] = ("resnet50", "resnet18")
    consume_batches: tuple[int, ...] = (64, 128, 256, 512)
    consume_steps: int = 10  # timed, after 3 warm-up steps (cuDNN's autotuner runs in those)
    feed_workers: tuple[int, ...] = (8, 16)
    feed_batch: int = 64
    e2e_epochs: int = 1  # timed, after one whole warm-up epoch (a partial one would restart the workers)

    def __post_init__(self) -> None:
        checks.device("--device", self.device)
        object.__setattr__(self, "size", checks.size("--size", self.size))
        for name in ("models", "consume_batches", "feed_workers"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} needs at least one value")
        for name in ("consume_batches", "feed_workers"):
            for value in getattr(self, name):
                checks.count(f"--{name.replace('_', '-')}", value)
        for name in ("consume_steps", "feed_batch", "e2e_epochs"):
            checks.count(f"--{name.replace('_', '-')}", getattr(self, name))


def one_line(error: BaseException, limit: int = 300) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:limit]


def write_part(out: Path, name: str, rows: list[dict]) -> int:
    """Writes the step's rows; its exit status: 1 where no point was measured."""
    from feeding.io import write_json

    write_json(out / "parts" / f"{name}.json", rows)
    failed = sum("error" in row for row in rows)
    print(f"{name}: {len(rows)} points, {failed} failed", flush=True)
    return 0 if len(rows) > failed else 1


def read_part(out: Path, name: str) -> list[dict]:
    path = out / "parts" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def measured_rows(points: list[dict], measure) -> list[dict]:
    """``measure(point)`` added to each ``point`` (a dict), or the error where it raised."""
    rows = []
    for point in points:
        row = dict(point)
        try:
            row.update(measure(row))
        except Exception as error:  # noqa: BLE001 - recorded; the next point runs
            row["error"] = one_line(error)
        print(row, flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- consumption


def consume_point(plan: CheckPlan, point: dict) -> dict:
    """The tuner's model-side point, with more warm-up (cuDNN's autotuner) and steps."""
    from dataclasses import asdict

    from bench.consume import ConsumeConfig
    from bench.tune.measure import consume_point as tuner_consume_point

    config = ConsumeConfig(model=point["model"], device=plan.device, batch_size=point["batch"], size=plan.size,
                           warmup=3, steps=plan.consume_steps).resolved()
    measured = tuner_consume_point(config)
    return {**asdict(measured), "step_ms": 1000 * point["batch"] / measured.ips, "step": config.step.to_dict()}


def consume(plan: CheckPlan, args) -> int:
    points = [{"model": model, "batch": batch, "size": list(plan.size)}
              for model in plan.models for batch in plan.consume_batches]
    return write_part(args.out, "consume", measured_rows(points, lambda point: consume_point(plan, point)))


# ---------------------------------------------------------------- feed to the device


def feed_settings(device: str) -> list[tuple[str, str]]:
    """(pipeline, decode device) of each local pipeline; both decode devices where it can decode on ``device``."""
    from feeding.backends import PIPELINES, capabilities

    settings = []
    for name in PIPELINES:
        record = capabilities(name)
        if record.needs_cluster:
            continue
        settings.append((name, "cpu"))
        if record.decode_device(device) != "cpu":
            settings.append((name, record.decode_device(device)))
    return settings


def feed_config(plan: CheckPlan, point: dict, **overrides):
    from feeding import FeedConfig
    from feeding.spec import train_spec

    return FeedConfig(pipeline=point["pipeline"], batch_size=point["batch"], workers=point["workers"],
                      spec=train_spec(plan.size), decode_device=point["decode_device"], **overrides)


def feed_point(plan: CheckPlan, samples, point: dict) -> dict:
    """The tuner's feed point (to the device, into a consumer that does nothing), and how an epoch
    compares with what the feeder makes ahead."""
    from dataclasses import asdict

    from bench.tune.measure import feed_point as tuner_feed_point
    from feeding.backends import capabilities
    from feeding.device import DeviceFeeder
    from feeding.factory import create_feeder

    missing = capabilities(point["pipeline"]).missing_dependency()
    if missing:
        raise RuntimeError(missing)
    config = feed_config(plan, point)
    with create_feeder(samples, config) as feeder:  # built only to be asked its epoch and read-ahead
        epoch, ahead = len(feeder), DeviceFeeder(feeder, plan.device).pipeline_depth
    from training.models import training_threads

    threads = training_threads(plan.device, os.cpu_count() or 1, config.workers)  # as fit and tune run it
    measured, skipped = tuner_feed_point(samples, config, 16, plan.device, threads, channels_last=True)
    return {**asdict(measured), "epoch_batches": epoch, "read_ahead_batches": ahead,
            "epoch_outlasts_read_ahead": epoch > ahead, "skipped": len(skipped)}


def feed(plan: CheckPlan, args) -> int:
    from feeding import discover

    samples = discover(args.data)
    points = [{"pipeline": pipeline, "decode_device": decode_device, "workers": workers, "batch": plan.feed_batch,
               "size": list(plan.size), "images": len(samples)}
              for pipeline, decode_device in feed_settings(plan.device) for workers in plan.feed_workers]
    return write_part(args.out, "feed", measured_rows(points, lambda point: feed_point(plan, samples, point)))


# ---------------------------------------------------------------- end to end


def fastest_feed_points(rows: list[dict]) -> list[dict]:
    """Per (pipeline, decode device), the measured point with the most img/s."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["pipeline"], row["decode_device"])
        if "error" not in row and (key not in best or row["ips"] > best[key]["ips"]):
            best[key] = row
    return list(best.values())


def tuner_forecast(plan: CheckPlan, fed: dict, consumed: dict):
    """The tuner's forecast for a measured feed point and model-side point."""
    import os

    from bench.tune.forecast import ConsumePoint, FeedPoint, Setup, forecast

    setup = Setup(fed["pipeline"], fed["workers"], fed["batch"], plan.size)
    feed = FeedPoint(fed["ips"], fed["host_s_per_batch"], fed["loader_cpu_s_per_image"])
    consume = ConsumePoint(consumed["ips"], consumed["host_s_per_step"], consumed["cpu_s_per_image"])
    return forecast(feed, consume, setup, os.cpu_count() or 1, plan.device == "cpu")


def trained_rate(plan: CheckPlan, samples, point: dict) -> dict:
    """The feed point's feeder feeding the model's training step in fit's loop: one warm-up epoch,
    then the timed ones; img/s and the share of it spent waiting for data."""
    import torch

    from bench.consume import ConsumeConfig, training_step
    from feeding.device import DeviceFeeder
    from feeding.factory import create_feeder
    from training.engine import run_epoch
    from training.step import step_settings

    consume = ConsumeConfig(model=point["model"], device=plan.device, batch_size=point["batch"], size=plan.size,
                            num_classes=len(samples.classes)).resolved()
    with step_settings(consume.step, torch.device(plan.device)):
        step = training_step(consume)
        with create_feeder(samples, feed_config(plan, point, drop_last=True)) as feeder:
            device_feeder = DeviceFeeder(feeder, plan.device, channels_last=consume.step.channels_last)
            run_epoch(step, device_feeder, 0)  # worker start-up, cuDNN's autotuner
            epochs = [run_epoch(step, device_feeder, epoch) for epoch in range(1, 1 + plan.e2e_epochs)]
    seconds = sum(e.seconds for e in epochs)
    return {"measured_ips": sum(e.images for e in epochs) / seconds,
            "data_wait_fraction": sum(e.data_wait_s for e in epochs) / seconds, "step": consume.step.to_dict()}


def e2e_point(plan: CheckPlan, samples, point: dict) -> dict:
    """The forecast and the measured rate of one (model, feed point). The point carries in the feed
    and model-side rows it was made from; the row written keeps their rates only."""
    fed, consumed = point.pop("fed"), point.pop("consumed")
    if consumed is None:
        raise RuntimeError(f"no consumption measured for {point['model']} at batch {point['batch']}")
    predicted = tuner_forecast(plan, fed, consumed)
    measured = trained_rate(plan, samples, point)
    return {"feed_ips": fed["ips"], "consume_ips": consumed["ips"], "predicted_ips": predicted.predicted_ips,
            "bottleneck": predicted.bottleneck, "stages": dict(predicted.stages), **measured,
            "prediction_error": measured["measured_ips"] / predicted.predicted_ips - 1}


def e2e(plan: CheckPlan, args) -> int:
    from feeding import discover

    samples = discover(args.data)
    consumed = {(row["model"], row["batch"]): row for row in read_part(args.out, "consume") if "error" not in row}
    points = [{"model": model, **{key: fed[key] for key in ("pipeline", "decode_device", "workers", "batch")},
               "fed": fed, "consumed": consumed.get((model, fed["batch"]))}
              for model in plan.models for fed in fastest_feed_points(read_part(args.out, "feed"))]
    return write_part(args.out, "e2e", measured_rows(points, lambda point: e2e_point(plan, samples, point)))


# ---------------------------------------------------------------- report


def read_steps(path: Path | None) -> list[dict]:
    """The shell script's step log: name, status, seconds (tab-separated)."""
    if path is None or not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, status, seconds = line.split("\t")[:3]
        rows.append({"step": name, "status": status, "seconds": float(seconds)})
    return rows


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tuned(out: Path) -> dict | None:
    """The tuner's pick as `feedbench tune --device cuda` wrote it, and fit's verdict on it."""
    record = read_json(out / "recommendation.json")
    if record is None:
        return None
    keys = ("pipeline", "workers", "batch", "size", "model", "decode_device", "predicted_ips", "measured_ips",
            "prediction_error", "data_wait_fraction", "bottleneck", "verdict", "step")
    fit = read_json(out / "fit-summary.json") or {}
    return {**{key: record.get(key) for key in keys}, "fit_prediction": fit.get("prediction"),
            "fit_history": fit.get("history")}


def table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """A Markdown table; the first column left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def measured_or_failed(row: dict, cells) -> tuple:
    """A row's measured cells, or its error where the point failed."""
    return (f"failed: {row['error']}",) if "error" in row else cells(row)


def consume_table(rows: list[dict]) -> list[str]:
    def cells(r: dict) -> tuple:
        return f"{r['ips']:.0f}", f"{r['step_ms']:.1f}"

    return table(("model", "batch", "img/s", "step ms"),
                 [(r["model"], r["batch"], *measured_or_failed(r, cells)) for r in rows])


def feed_table(rows: list[dict]) -> list[str]:
    def cells(r: dict) -> tuple:
        return f"{r['ips']:.0f}", f"{r['epoch_batches']} / {r['read_ahead_batches']}"

    return table(("pipeline", "decode", "workers", "batch", "img/s", "epoch / read-ahead (batches)"),
                 [(r["pipeline"], r["decode_device"], r["workers"], r["batch"], *measured_or_failed(r, cells))
                  for r in rows])


def e2e_table(rows: list[dict]) -> list[str]:
    def cells(r: dict) -> tuple:
        return (f"{r['predicted_ips']:.0f}", f"{r['measured_ips']:.0f}", f"{100 * r['prediction_error']:+.0f}%",
                f"{100 * r['data_wait_fraction']:.0f}%")

    return table(("model", "pipeline", "decode", "workers", "forecast img/s", "measured img/s", "error", "data wait"),
                 [(r["model"], r["pipeline"], r["decode_device"], r["workers"], *measured_or_failed(r, cells))
                  for r in rows])


def tune_lines(pick: dict | None) -> list[str]:
    if pick is None:
        return ["no recommendation was written (see the steps above)"]
    return [f"pick: {pick['pipeline']}, {pick['workers']} workers, batch {pick['batch']}, {pick['size']}; "
            f"predicted {pick['predicted_ips']} img/s, tune's own check {pick['measured_ips']} img/s; "
            f"{pick['verdict']}", "", f"fit: {pick['fit_prediction'] or 'no fit summary'}"]


def markdown(report: dict) -> str:
    host = report["provenance"]["machine"]
    steps = [(s["step"], s["status"], f"{s['seconds']:.0f}") for s in report["steps"]]
    lines = [f"# GPU check: {host.get('gpu') or 'no GPU'}, {host['cores']} cores", "",
             f"torch {host['torch']}; {report['provenance']['created']}; `bash scripts/gpu_check.sh`", "",
             "## Steps", "", *table(("step", "status", "s"), steps),
             "", "## Consumption (bf16, channels_last on CUDA; img/s)", "", *consume_table(report["consume"]),
             "", "## Feed to the device (img/s)", "", *feed_table(report["feed"]),
             "", "## End to end in fit's loop against the tuner's forecast", "", *e2e_table(report["e2e"]),
             "", "## feedbench tune --device cuda, then training.fit --pipeline best", "", *tune_lines(report["tune"])]
    return "\n".join(lines) + "\n"


def report(plan: CheckPlan, args) -> int:
    from bench.provenance import provenance
    from feeding.io import write_atomic, write_json

    result = {"provenance": provenance(), "plan": {key: getattr(plan, key) for key in plan.__dataclass_fields__},
              "steps": read_steps(args.steps), "consume": read_part(args.out, "consume"),
              "feed": read_part(args.out, "feed"), "e2e": read_part(args.out, "e2e"), "tune": tuned(args.out)}
    write_json(args.out / f"{args.name}.json", result)
    write_atomic(args.out / f"{args.name}.md", markdown(result).encode())
    print(f"wrote {args.out / args.name}.json and .md", flush=True)
    return 0


STEPS = {"consume": consume, "feed": feed, "e2e": e2e, "report": report}


def make_parser() -> argparse.ArgumentParser:
    d = CheckPlan()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=options.HelpFormatter)
    parser.add_argument("step", choices=tuple(STEPS))
    parser.add_argument("--out", type=Path, default=Path("results/gpu"), help="folder of the parts and the report")
    parser.add_argument("--data", type=Path, default=None, help="the data set (feed, e2e)")
    parser.add_argument("--steps", type=Path, default=None, help="the shell script's step log (report)")
    parser.add_argument("--name", default="gpu-check", help="file name of the report, without extension")
    parser.add_argument("--device", default=d.device, help="cpu or cuda[:N]")
    parser.add_argument("--size", type=options.size, default=d.size, help="N or HxW pixels")
    many = dict(nargs="+", action=options.FlattenList)
    parser.add_argument("--models", type=options.listed(), default=d.models, help="timm model names", **many)
    parser.add_argument("--consume-batches", type=options.listed(options.positive_int), default=d.consume_batches,
                        help="batches the model side is measured at", **many)
    parser.add_argument("--consume-steps", type=options.positive_int, default=d.consume_steps, help="timed steps")
    parser.add_argument("--feed-workers", type=options.listed(options.positive_int), default=d.feed_workers,
                        help="worker counts (DALI: threads) each pipeline is measured with", **many)
    parser.add_argument("--feed-batch", type=options.positive_int, default=d.feed_batch,
                        help="the feed's batch, and the end-to-end one")
    parser.add_argument("--e2e-epochs", type=options.positive_int, default=d.e2e_epochs,
                        help="timed epochs per end-to-end point")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.step in ("feed", "e2e") and args.data is None:
        parser.error(f"{args.step} needs --data")
    try:
        plan = CheckPlan(device=args.device, size=args.size, models=args.models,
                         consume_batches=args.consume_batches, consume_steps=args.consume_steps,
                         feed_workers=args.feed_workers, feed_batch=args.feed_batch, e2e_epochs=args.e2e_epochs)
    except ValueError as error:
        parser.error(str(error))
    return STEPS[args.step](plan, args)


if __name__ == "__main__":
    sys.exit(main())
