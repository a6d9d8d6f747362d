"""Does the Lightning example learn as training.fit does? The same settings through both, macro-F1 per epoch.

    .venv/bin/python scripts/lightning_vs_fit.py [OUT_DIR] [--epochs N]

Runs ``scripts/lightning_example.py`` (``feeding.lightning.FeedDataModule`` under ``lightning.Trainer``)
and ``python -m training.fit`` with the same settings (below) on the embedded sample, each in a fresh
process and a fresh run directory, and compares their validation macro-F1 each epoch (the same
person-level split, seed and feed). Both train a timm resnet18 with AdamW, a per-update cosine
schedule and label smoothing 0.1; they differ in the loop (Lightning's against fit's) and in what
the model draws from torch's global generator (neither draws here: resnet18 has no dropout).
Writes OUT_DIR/lightning-vs-fit.md/.json (default OUT_DIR: results).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = ["--pipeline", "albumentations", "--model", "resnet18", "--size", "64", "--batch", "32", "--workers", "2",
            "--lr", "3e-3", "--seed", "0", "--label-smoothing", "0.1"]


def _run(command: list[str]) -> float:
    """Run ``command`` in the project root; its wall seconds (a failure stops the script with its output)."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - started


def lightning_f1(out: Path) -> list[float]:
    """The example's validation macro-F1 of each epoch, from its CSVLogger's metrics.csv."""
    (metrics,) = out.glob("logs/version_*/metrics.csv")
    with metrics.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_macro_f1")]
    return [float(row["val_macro_f1"]) for row in sorted(rows, key=lambda row: int(row["epoch"]))]


def fit_f1(out: Path) -> list[float]:
    history = json.loads((out / "summary.json").read_text(encoding="utf-8"))["history"]
    return [row["macro_f1"] for row in history]


def measure(epochs: int) -> dict:
    settings = [*SETTINGS, "--epochs", str(epochs)]
    with tempfile.TemporaryDirectory() as scratch:
        runs = {}
        for name, command, read in (
                ("lightning", [sys.executable, "scripts/lightning_example.py"], lightning_f1),
                ("training.fit", [sys.executable, "-m", "training.fit"], fit_f1)):
            out = Path(scratch) / name
            seconds = _run([*command, *settings, "--out", str(out)])
            f1 = read(out)
            runs[name] = {"macro_f1": f1, "best_macro_f1": max(f1), "best_epoch": f1.index(max(f1)) + 1,
                          "seconds": seconds}
    return {"settings": settings, "runs": runs}


def markdown(report: dict, command: str) -> str:
    machine, commit, runs = report["machine"], report["commit"], report["runs"]
    epochs = len(runs["training.fit"]["macro_f1"])
    lines = ["# The Lightning example against training.fit", "",
             f"`{command}`  ", f"Settings (both): `{' '.join(report['settings'])}`, the embedded sample.  ",
             f"Machine: {machine['cpu']}, {machine['cores']} cores; commit {commit['id']} "
             f"(dirty: {commit['dirty']}), {report['created']}", "",
             "Validation macro-F1 each epoch (person-level split), best, and wall seconds of the whole run.", "",
             "| loop | " + " | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " | best (epoch) | seconds |",
             "|---|" + "---:|" * (epochs + 2)]
    for name, run in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{f:.3f}" for f in run["macro_f1"])
                     + f" | {run['best_macro_f1']:.3f} ({run['best_epoch']}) | {run['seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import display_command, provenance
    from feeding.io import write_record_and_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results", help="folder for the table (.md) and its .json")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each run")
    args = parser.parse_args(argv)
    command = display_command("python scripts/lightning_vs_fit.py", list(argv if argv is not None else sys.argv[1:]))
    report = {**measure(args.epochs), **provenance()}
    stem = Path(args.out) / "lightning-vs-fit"
    write_record_and_table(stem, report, markdown(report, command))
    print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
