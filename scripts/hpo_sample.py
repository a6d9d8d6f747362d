"""The Optuna search on the sample, as a user runs it: a whole study, a study SIGKILLed mid-trial and
resumed, and the best trial's command line run again.

    .venv/bin/python scripts/hpo_sample.py [OUT_DIR] [--trials 8] [--epochs-per-trial 3] [--size 64]

1. ``python -m training.hpo --trials 8 --epochs-per-trial 3 --size 64`` on the embedded sample, on the
   feed ``feedbench tune`` recommended (results/recommendation.json), uninterrupted: its wall time, every
   trial (pruned ones included) and Optuna's plots.
2. The same command in another directory, SIGKILLed once two trials have finished and the next has
   reported an epoch, then run again with ``--resume``: the trials finished before the kill are kept
   as they were (and equal to run 1's: the same seed draws the same), the killed one runs again.
3. Run 1's best command line (report.md, best-command.txt), as printed, in a fresh process: its best
   macro-F1 against the best trial's.

Writes OUT_DIR/hpo-sample.md/.json and OUT_DIR/hpo-sample-<plot>.png (default OUT_DIR: results).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLOTS = ("history", "intermediate", "importances", "parallel")


def hpo_command(out: Path, args) -> list[str]:
    return [sys.executable, "-m", "training.hpo", "--trials", str(args.trials), "--epochs-per-trial",
            str(args.epochs_per_trial), "--size", str(args.size), "--out", str(out)]


def run(command: list[str]) -> float:
    """Run ``command`` in the project root; its wall seconds (a failure stops the script with its output)."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - started


def run_killed(out: Path, args) -> dict:
    """Start the study, SIGKILL it once 2 trials have finished and the next has reported an epoch."""
    from training.hpo.study import stored_trials, trial_progress

    started = time.perf_counter()
    process = subprocess.Popen(hpo_command(out, args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None:
        trials = trial_progress(out / "study.db")
        finished = [t for t in trials if t[1] in ("COMPLETE", "PRUNED")]
        running = [t for t in trials if t[1] == "RUNNING" and t[2]]
        if len(finished) >= 2 and running:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return {"killed_in_trial": running[0][0], "killed_after_epochs": running[0][2],
                    "seconds_before_kill": time.perf_counter() - started,
                    "before": [trial_row(t) for t in stored_trials(out / "study.db")]}
        time.sleep(0.5)
    sys.exit(f"the study ended before it could be killed:\n{process.stderr.read()[-3000:]}")


def trial_row(trial) -> dict:
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value, "params": trial.params,
            "macro_f1_per_epoch": [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)],
            "retry_of": trial.user_attrs.get("retry_of"), "interrupted": bool(trial.user_attrs.get("interrupted"))}


def measure(args, out_dir: Path) -> dict:
    from training.hpo.study import stored_trials

    with tempfile.TemporaryDirectory() as scratch:
        whole, killed = Path(scratch) / "whole", Path(scratch) / "killed"
        seconds = run(hpo_command(whole, args))
        summary = json.loads((whole / "summary.json").read_text(encoding="utf-8"))
        for name in PLOTS:
            if (whole / "plots" / f"{name}.png").exists():
                shutil.copyfile(whole / "plots" / f"{name}.png", out_dir / f"hpo-sample-{name}.png")
        kill = run_killed(killed, args)
        kill["resume_seconds"] = run([*hpo_command(killed, args), "--resume"])
        kill["after"] = [trial_row(t) for t in stored_trials(killed / "study.db")]
        best = dict(summary["best"])
        command = best["command"].replace(str(whole / "best"), str(Path(scratch) / "best-again"))
        reproduce_seconds = run([sys.executable, *shlex.split(command)[1:]])
        again = json.loads((Path(scratch) / "best-again" / "summary.json").read_text(encoding="utf-8"))
    return {"settings": {"trials": args.trials, "epochs_per_trial": args.epochs_per_trial, "size": args.size},
            "whole": {"seconds": seconds, "summary": strip_paths(summary)}, "kill_and_resume": kill,
            "reproduced": {"best_trial": best["number"], "best_value": best["value"],
                           "command": shlex.join(shlex.split(best["command"])[:-2]).replace(scratch, "<scratch>"),
                           "reproduced_value": again["best_macro_f1"],
                           "reproduced_per_epoch": [row["macro_f1"] for row in again["history"]],
                           "seconds": reproduce_seconds}}


def strip_paths(summary: dict) -> dict:
    """The summary without the scratch directory's paths (the commands' spec files and --out)."""
    for trial in summary["trials"]:
        trial["command"] = None
    summary["best"]["command"] = None
    summary["storage"] = "<scratch>/study.db"
    return summary


def markdown(report: dict, command: str) -> str:
    machine, commit, whole, kill, again = (report["machine"], report["commit"], report["whole"],
                                           report["kill_and_resume"], report["reproduced"])
    s, summary = report["settings"], whole["summary"]
    run_ = summary["run"]
    counts = summary["counts"]
    lines = ["# Optuna search on the sample: a whole study, a killed and resumed one, the best command again", "",
             f"`{command}`  ",
             f"Machine: {machine['cpu']}, {machine['cores']} cores; commit {commit['id']} (dirty: {commit['dirty']}), "
             f"{report['created']}", "",
             f"## 1. `python -m training.hpo --trials {s['trials']} --epochs-per-trial {s['epochs_per_trial']} "
             f"--size {s['size']}`", "",
             f"Wall time **{whole['seconds'] / 60:.1f} min** for {summary['trials_finished']} trials: "
             f"{counts['complete']} complete, **{counts['pruned']} pruned**, {counts['fail']} failed. Every trial "
             f"trains resnet18 with training.fit's loop on the recommended feed ({run_['pipeline']}, batch "
             f"{run_['batch']}, {run_['workers']} workers) at {run_['size'][0]}x{run_['size'][1]}, "
             f"{run_['epochs_per_trial']} epochs, on the person-level split; its score is its best validation "
             "macro-F1; the median pruner judges from the second epoch, once 2 trials have finished.", "",
             "| trial | outcome | val macro-F1 per epoch | score | seconds | values |", "|---:|---|---|---:|---:|---|"]
    for t in summary["trials"]:
        outcome = f"pruned after epoch {t['pruned_after']}" if t["state"] == "pruned" else t["state"]
        per_epoch = ", ".join(f"{v:.3f}" for v in t["macro_f1_per_epoch"])
        value = "—" if t["value"] is None or t["state"] != "complete" else f"{t['value']:.4f}"
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"| {t['number']} | {outcome} | {per_epoch} | {value} | {t['seconds']:.0f} | {values} |")
    plots = ", ".join(f"[{name}](hpo-sample-{name}.png)" for name in PLOTS)
    lines += ["", f"Optuna's plots of this study: {plots}", "",
              "## 2. SIGKILL mid-trial, then `--resume`", ""]
    before = {t["number"]: t for t in kill["before"]}
    kept = [t for t in kill["after"]
            if t["number"] in before and before[t["number"]]["state"] in ("complete", "pruned")]
    same = all(t["value"] == before[t["number"]]["value"] and t["state"] == before[t["number"]]["state"] for t in kept)
    first = {t["number"]: t for t in summary["trials"]}
    as_run_1 = all(t["params"] == first[t["number"]]["params"] and t["macro_f1_per_epoch"]
                   == first[t["number"]]["macro_f1_per_epoch"] for t in kept)
    retried = [t for t in kill["after"] if t["retry_of"] == kill["killed_in_trial"]]
    killed = next(t for t in kill["after"] if t["number"] == kill["killed_in_trial"])
    same_draw = bool(retried) and retried[0]["params"] == killed["params"]
    finished_after = sum(t["state"] in ("complete", "pruned") or (t["state"] == "fail" and not t["interrupted"])
                         for t in kill["after"])
    lines += [f"Killed after {kill['seconds_before_kill']:.0f} s, in trial {kill['killed_in_trial']} after its epoch "
              f"{kill['killed_after_epochs']}; the resumed run took {kill['resume_seconds']:.0f} s and ended with "
              f"{finished_after} finished trials ({len(kill['after'])} in the storage: the killed one is kept as "
              "failed, 'interrupted').", "",
              f"- the {len(kept)} trials finished before the kill: kept, not run again, values unchanged: **{same}**; "
              f"the same draws and per-epoch macro-F1 as run 1's trials of those numbers: **{as_run_1}**",
              f"- the killed trial's values ran again first, as trial "
              f"{', '.join(str(t['number']) for t in retried) or '(none)'}: "
              f"**{same_draw}**"
              " (same values)", "",
              "| trial | state | val macro-F1 per epoch | note |", "|---:|---|---|---|"]
    for t in kill["after"]:
        note = "killed (interrupted)" if t["interrupted"] else (f"the killed trial {t['retry_of']} again"
                                                               if t["retry_of"] is not None else "")
        lines.append(f"| {t['number']} | {t['state']} | {', '.join(f'{v:.3f}' for v in t['macro_f1_per_epoch'])} "
                     f"| {note} |")
    lines += ["", "## 3. The best command line, run again", "",
              f"Best trial {again['best_trial']}: val macro-F1 **{again['best_value']:.4f}**; its command (from "
              f"report.md, `--out` left off here) in a fresh process gave **{again['reproduced_value']:.4f}** "
              f"(per epoch {', '.join(f'{v:.4f}' for v in again['reproduced_per_epoch'])}; "
              f"{again['seconds']:.0f} s).", "", "```", again["command"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import display_command, provenance
    from feeding.io import write_record_and_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results", help="folder for the table (.md), .json and plots")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs-per-trial", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    command = display_command("python scripts/hpo_sample.py", list(argv if argv is not None else sys.argv[1:]))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**measure(args, out_dir), **provenance()}
    stem = out_dir / "hpo-sample"
    write_record_and_table(stem, report, markdown(report, command))
    print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
