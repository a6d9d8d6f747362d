"""Does the tuner's answer hold in every regime? Predicted against measured, on this machine.

    .venv/bin/python scripts/verdict_regimes.py [OUT_DIR] [--budget-s S]

For the sample data (60 people) and a 300-person sample (``feedbench data sample --people 300``,
2,100 images: epochs far longer than any read-ahead), ``feedbench tune`` runs as a user runs it
(224x224, its default pipelines) against:

- the simulated accelerator ``sim:R`` at R = 0.3, 0.7, 1, 1.5 and 3 times this host's feed
  ceiling (the most img/s any loader delivers to the device; measured first, with a device far
  faster than any feed), from model-bound to input-bound;
- a small real CPU model (mobilenetv3_small_100 at 96x96), where the loader's workers and the
  model share the cores.

On the sample data, ``feedbench tune --device sim:R`` also runs with its default shapes, as a user
runs it, at twice and half the ceiling: it must name ``input`` and ``model``.

Then ``python -m training.fit --pipeline best`` trains with the CPU model's recommendation:
the step it runs must be the one tune measured, and its rate must land near the prediction.

Each row is the tuner's pick: its predicted rate, the rate the real training loop measured with
it, and the bottleneck named. The named bottleneck is right when the regime and the measured
loop agree with it: below the ceiling ``model`` (the loop waits for data at most WAITING of the
time), above it ``input`` (it waits more); at R = the ceiling (balanced) either is right. For the
CPU model, the loop decides: ``input`` where it waits more than WAITING (with no workers, more
than half the time: loading and training take turns), else ``model`` or ``host``. Writes
OUT_DIR/verdict-regimes-<cores>c.md and .json (default OUT_DIR: results).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REGIMES = (0.3, 0.7, 1.0, 1.5, 3.0)  # R / feed ceiling
CEILING_PROBE = "sim:1000000"  # a device no feed keeps up with: the pick's feed is the ceiling
CPU_MODEL, CPU_SIZE = "mobilenetv3_small_100", (96, 96)
WAITING = 0.10  # a model that waits more than this share of the time is input-bound
TOLERANCE = 0.15
AS_A_USER = ((2.0, "input"), (0.5, "model"))  # R / ceiling, the bottleneck tune must name (default shapes)
FIT_EPOCHS = 5  # training.fit epochs on the CPU model's recommendation (the first is left out of its rate)


def tune_once(data: Path, device: str, out: Path, budget_s: float, model: str = "resnet18",
              size: tuple[int, int] | None = (224, 224)) -> dict:
    """``feedbench tune``'s record; ``size`` None: its default shapes."""
    from bench.tune.config import TuneConfig
    from bench.tune.run import tune

    shapes = {} if size is None else {"sizes": (size,)}
    return tune(TuneConfig(data=str(data), model=model, device=device, budget_s=budget_s, out=str(out), **shapes))


def expected_bottleneck(multiple: float | None, record: dict) -> str:
    """What the measured loop says bounds the run (see the module docstring). With no workers the
    training process loads and trains in turn: loading is the bottleneck when it takes more than
    half the time, not whenever the model waits."""
    if multiple == 1.0:
        return "either"
    if multiple is not None:
        return "model" if multiple < 1 else "input"
    waiting = 0.5 if record["workers"] == 0 else WAITING
    return "input" if record["data_wait_fraction"] > waiting else "model or host"


def row(data_name: str, device: str, multiple: float | None, record: dict) -> dict:
    expected = expected_bottleneck(multiple, record)
    named = record["bottleneck_stage"]
    right = expected == "either" or named in expected.split(" or ")
    if multiple is not None and multiple != 1.0:  # the measured loop must agree with the regime too
        waited = record["data_wait_fraction"] > WAITING
        right = right and waited == (expected == "input")
    error = record["measured_ips"] / record["predicted_ips"] - 1
    return {"data": data_name, "device": device, "r_over_ceiling": multiple, "model": record["model"],
            "pick": _pick(record),
            "predicted_ips": record["predicted_ips"], "measured_ips": record["measured_ips"], "error": error,
            "within_tolerance": abs(error) <= TOLERANCE, "named": named, "expected": expected,
            "data_wait_fraction": record["data_wait_fraction"], "right": right,
            "stages": record["stages"], "feed_ceiling_ips": record["feed_ceiling_ips"]}


def data_sets() -> list[tuple[str, Path]]:
    from feeding.sample import ensure_sample

    return [("sample (60 people, 420 images)", ensure_sample()),
            ("300 people (2,100 images)", ensure_sample(people=300))]


def run(out: Path, budget_s: float) -> dict:
    rows, ceilings, fits = [], {}, []
    scratch = out  # tune() returns its record; it writes no report of its own
    for name, data in data_sets():
        ceiling = tune_once(data, CEILING_PROBE, scratch, budget_s)["feed_ceiling_ips"]
        ceilings[name] = ceiling
        print(f"{name}: feed ceiling {ceiling:.0f} img/s", flush=True)
        for multiple in REGIMES:
            device = f"sim:{multiple * ceiling:.0f}"
            rows.append(row(name, device, multiple, tune_once(data, device, scratch, budget_s)))
            print(_line(rows[-1]), flush=True)
        record = tune_once(data, "cpu", scratch, budget_s, model=CPU_MODEL, size=CPU_SIZE)
        rows.append(row(name, "cpu", None, record))
        print(_line(rows[-1]), flush=True)
        fits.append(fit_with(record, data, name))
        print(f"  training.fit --pipeline best: {fits[-1]['verdict']}", flush=True)
    as_a_user = named_as_a_user(data_sets()[0][1], ceilings[data_sets()[0][0]], scratch, budget_s)
    return {"rows": rows, "feed_ceilings": ceilings, "fits": fits, "as_a_user": as_a_user,
            "tolerance": TOLERANCE, "waiting": WAITING}


def named_as_a_user(data: Path, ceiling: float, out: Path, budget_s: float) -> list[dict]:
    """``feedbench tune --device sim:R`` with its default shapes at each AS_A_USER multiple of the ceiling."""
    named = []
    for multiple, expected in AS_A_USER:
        device = f"sim:{multiple * ceiling:.0f}"
        record = tune_once(data, device, out, budget_s, size=None)
        named.append({"device": device, "r_over_ceiling": multiple, "pick": _pick(record),
                      "named": record["bottleneck_stage"], "expected": expected,
                      "right": record["bottleneck_stage"] == expected, "predicted_ips": record["predicted_ips"],
                      "measured_ips": record["measured_ips"], "data_wait_fraction": record["data_wait_fraction"]})
        print(f"  as a user, {device} ({multiple:g}x ceiling): {named[-1]['pick']}, named {named[-1]['named']}, "
              f"expected {expected}", flush=True)
    return named


def fit_with(record: dict, data: Path, name: str, epochs: int = FIT_EPOCHS) -> dict:
    """``python -m training.fit --pipeline best`` on the tuner's recommendation: the step it ran, and its
    img/s (the median of its epochs after the first, data wait included) against the prediction."""
    import statistics
    import tempfile

    from feeding.io import write_json
    from training.config import FitConfig
    from training.trainer import fit_run

    with tempfile.TemporaryDirectory() as scratch:
        recommendation = write_json(Path(scratch) / "recommendation.json", record)
        summary = fit_run(FitConfig(pipeline="best", data=str(data), model=record["model"], device="cpu",
                                    epochs=epochs, recommendation=str(recommendation), out=f"{scratch}/run"))
    rates = [epoch["images_per_sec"] for epoch in summary["history"]]
    steady = statistics.median(rates[1:])
    return {"data": name, "model": record["model"], "pick": _pick(record),
            "step_same": summary["step"] == record["step"],
            "predicted_ips": record["predicted_ips"], "epoch_ips": rates, "steady_ips": steady,
            "error": steady / record["predicted_ips"] - 1, "verdict": summary["prediction"]}


def _pick(record: dict) -> str:
    return (f"{record['pipeline']}, {record['workers']} workers, batch {record['batch']}, "
            f"{record['size'][0]}x{record['size'][1]}")


def _line(r: dict) -> str:
    regime = f"{r['r_over_ceiling']:g}x ceiling" if r["r_over_ceiling"] is not None else CPU_MODEL
    return (f"  {r['device']:>12} ({regime}): {r['pick']}: predicted {r['predicted_ips']:.0f}, measured "
            f"{r['measured_ips']:.0f} img/s ({100 * r['error']:+.1f}%), named {r['named']}, expected "
            f"{r['expected']} (data wait {100 * r['data_wait_fraction']:.0f}%){'' if r['right'] else '  WRONG'}")


def markdown(report: dict, command: str) -> str:
    m = report["machine"]
    lines = [f"# The tuner's verdict in every regime ({m['cores']} cores)", "",
             f"`{command}`  ", f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu']}; torch {m['torch']}  ",
             f"Commit: {report['commit']['id']} (dirty: {report['commit']['dirty']}), {report['created']}", "",
             "Each row is `feedbench tune`'s pick (224x224 on `sim:R`, 96x96 for the CPU model): the rate it "
             "predicted, the rate the real training loop measured with it (`training.engine.run_epoch`, the step "
             "`training.fit` runs), and the bottleneck it named. A named bottleneck is right when the measured "
             f"loop agrees: `input` with the model waiting more than {100 * report['waiting']:.0f}% of the time, "
             "`model` or `host` with less; at R = the feed ceiling (balanced) either is. R is a multiple of "
             "the host's feed ceiling: the most img/s any loader delivered to the device, measured first "
             f"against `{CEILING_PROBE}`.", ""]
    for name, ceiling in report["feed_ceilings"].items():
        lines.append(f"- {name}: feed ceiling **{ceiling:.0f} img/s**")
    lines += ["", "| data | device | R / ceiling | pick | predicted img/s | measured img/s | error | named | "
                  "data wait | expected | right |",
              "|---|---|---:|---|---:|---:|---:|---|---:|---|---|"]
    for r in report["rows"]:
        regime = f"{r['r_over_ceiling']:g}" if r["r_over_ceiling"] is not None else f"{CPU_MODEL} (CPU)"
        lines.append(f"| {r['data']} | {r['device']} | {regime} | {r['pick']} | {r['predicted_ips']:.0f} | "
                     f"{r['measured_ips']:.0f} | {100 * r['error']:+.1f}% | {r['named']} | "
                     f"{100 * r['data_wait_fraction']:.0f}% | {r['expected']} | {'yes' if r['right'] else '**no**'} |")
    within = sum(r["within_tolerance"] for r in report["rows"])
    right = sum(r["right"] for r in report["rows"])
    lines += ["", f"{within} of {len(report['rows'])} rows within ±{100 * report['tolerance']:.0f}%; the named "
                  f"bottleneck right in {right} of {len(report['rows'])}."]
    lines += ["", "`python -m training.fit --pipeline best` on the CPU model's recommendation "
                  f"({FIT_EPOCHS} epochs; its rate: the median of the epochs after the first, data wait and the "
                  "epoch ends included):", "",
              "| data | pick | same step as tune | predicted img/s | fit img/s | error |",
              "|---|---|---|---:|---:|---:|"]
    for f in report["fits"]:
        lines.append(f"| {f['data']} | {f['pick']} | {'yes' if f['step_same'] else '**no**'} | "
                     f"{f['predicted_ips']:.0f} | {f['steady_ips']:.0f} | {100 * f['error']:+.1f}% |")
    lines += ["", "`feedbench tune --device sim:R` on the sample data with its default shapes (224, 192, 160 and "
                  "128 px), as a user runs it:", "",
              "| device | R / ceiling | pick | predicted img/s | measured img/s | data wait | named | expected "
              "| right |",
              "|---|---:|---|---:|---:|---:|---|---|---|"]
    for u in report["as_a_user"]:
        lines.append(f"| {u['device']} | {u['r_over_ceiling']:g} | {u['pick']} | {u['predicted_ips']:.0f} | "
                     f"{u['measured_ips']:.0f} | {100 * u['data_wait_fraction']:.0f}% | {u['named']} | "
                     f"{u['expected']} | {'yes' if u['right'] else '**no**'} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import display_command, provenance
    from feeding.io import write_record_and_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results", help="folder for the table (.md) and its .json")
    parser.add_argument("--budget-s", type=float, default=120.0, help="each tune run's search budget (seconds)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report = {**run(out, args.budget_s), **provenance()}
    stem = out / f"verdict-regimes-{os.cpu_count()}c"
    command = display_command("python scripts/verdict_regimes.py", list(argv if argv is not None else sys.argv[1:]))
    write_record_and_table(stem, report, markdown(report, command))
    print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
