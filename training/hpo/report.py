"""What a study leaves in its run directory: summary.json (every trial), report.md (the best trial, its
``training.fit`` command line, the trials, the search space) and Optuna's matplotlib plots in plots/
(history, intermediate values, where pruning shows, parameter importances, parallel coordinates).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from feeding.io import display_text, write_atomic, write_json

PLOTS = {  # file stem -> (Optuna's matplotlib function, what the report says it shows)
    "history": ("plot_optimization_history", "each trial's score and the best so far"),
    "intermediate": ("plot_intermediate_values", "validation macro-F1 per epoch of every trial: the pruned "
                     "ones stop early"),
    "importances": ("plot_param_importances", "how much of the score's variance each parameter explains "
                    "(fANOVA over the complete trials)"),
    "parallel": ("plot_parallel_coordinate", "each complete trial's values and score"),
}
BEST_COMMAND = "best-command.txt"


def trial_record(trial) -> dict:
    """One trial as JSON: state, score, macro-F1 per epoch, values, seconds, and why it ended early."""
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "macro_f1_per_epoch": [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)],
            "params": trial.params, "seconds": seconds, "pruned_after": attrs.get("pruned_after"),
            "error": attrs.get("error"), "interrupted": bool(attrs.get("interrupted")),
            "retry_of": attrs.get("retry_of"), "command": attrs.get("command")}


def write_report(study, out: Path, config, plan, space, url: str, seconds: float) -> dict:
    """summary.json, report.md, best-command.txt and plots/*.png in ``out``, each written atomically."""
    from training.hpo.study import best_trial, finished_trials

    trials = [trial_record(t) for t in study.trials]
    best = best_trial(study)
    counts = {state: sum(t["state"] == state for t in trials) for state in ("complete", "pruned", "fail")}
    counts["interrupted"] = sum(t["interrupted"] for t in trials)
    from training.hpo.study import shown_storage

    summary = {"study": config.study_name, "storage": display_text(shown_storage(url)), "trials_asked": config.trials,
               "trials_finished": len(finished_trials(study)), "counts": counts, "seconds_this_run": seconds,
               "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                                  "command": best.user_attrs.get("command")},
               "search_space": space.record(), "pruner": type(study.pruner).__name__,
               "run": {"pipeline": plan.base.pipeline, "batch": plan.base.batch, "workers": plan.base.workers,
                       "epochs_per_trial": plan.base.epochs, "size": list(plan.spec.train.output_size),
                       "folds": plan.folds, "val_fraction": None if plan.folds else plan.base.val_fraction,
                       "seed": plan.base.seed, "device": plan.base.device},
               "trials": trials}
    plots = draw_plots(study, out / "plots")
    summary["plots"] = {name: (f"plots/{name}.png" if ok is None else None) for name, ok in plots.items()}
    write_json(out / "summary.json", summary)
    if best is not None:
        write_atomic(out / BEST_COMMAND, (best.user_attrs["command"] + "\n").encode())
    write_atomic(out / "report.md", report_markdown(summary, space, plots).encode())
    print(f"report: {out / 'report.md'}")
    if best is not None:
        print(f"best: trial {best.number}, val macro-F1 {best.value:.4f}; train it again with:\n  "
              f"{best.user_attrs['command']}")
    return summary


def draw_plots(study, directory: Path) -> dict[str, str | None]:
    """Each of ``PLOTS`` as a PNG; per plot None where drawn, else why not (too few trials, say)."""
    import matplotlib
    import optuna

    matplotlib.use("Agg")  # no display: the report is a file
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    outcome = {}
    directory.mkdir(parents=True, exist_ok=True)
    for name, (function, _) in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # "no complete trials" and the like: said below
            try:
                axes = getattr(plots, function)(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                outcome[name] = f"not drawn: {' '.join(str(error).split())}"
                continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        if name == "intermediate":
            axes.set_xlabel("step: epoch - 1 (with K folds: fold * epochs + epoch - 1)")
            axes.set_ylabel("val macro-F1")
        if not figure.axes or not any(ax.has_data() for ax in figure.axes):
            outcome[name] = "not drawn: too few complete trials"
        else:
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            import io

            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            write_atomic(directory / f"{name}.png", buffer.getvalue())
            outcome[name] = None
        plt.close(figure)
    return outcome


def cell(value) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def shown(params: dict, separator: str = ", ") -> str:
    """A trial's values as 'lr=0.0012, loss=focal' (floats to 4 significant digits)."""
    return separator.join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def outcome(trial: dict, epochs: int) -> str:
    if trial["state"] == "pruned":
        return f"pruned after epoch {trial['pruned_after']} of {epochs}"
    if trial["state"] == "fail":
        return "interrupted (run again)" if trial["interrupted"] else f"failed: {trial['error'] or '?'}"
    return trial["state"]


def report_markdown(summary: dict, space, plots: dict) -> str:
    run, counts, best = summary["run"], summary["counts"], summary["best"]
    epochs = run["epochs_per_trial"] * (run["folds"] or 1)
    split = f"{run['folds']} person-grouped folds (score: their mean)" if run["folds"] else \
        f"a person-level split ({run['val_fraction']:g} of the people held out)"
    lines = [
        f"# training.hpo: study `{summary['study']}`", "",
        f"{summary['trials_finished']} of {summary['trials_asked']} trials finished: {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail'] - counts['interrupted']} failed"
        + (f" ({counts['interrupted']} interrupted by a kill or Ctrl-C and run again)" if counts["interrupted"] else "")
        + f". Storage: `{summary['storage']}`; pruner: {summary['pruner']}; sampler: TPE, seed {run['seed']}.", "",
        f"Each trial trains with `training.fit`'s loop for {run['epochs_per_trial']} epochs on the "
        f"**{run['pipeline']}** feed (batch {run['batch']}, {run['workers']} workers, "
        f"{run['size'][0]}x{run['size'][1]}) "
        f"on {run['device']}, {split}; its score is its best validation macro-F1, which it reports after every "
        "epoch to the pruner.", "",
    ]
    if best is not None:
        lines += [f"## Best: trial {best['number']}, val macro-F1 {best['value']:.4f}", "",
                  "| parameter | value |", "|---|---|",
                  *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                    for k, v in best["params"].items()], "",
                  "Train it again (the same run: feed, step, seed and spec file explicit):", "",
                  "```", display_text(best["command"]), "```", ""]
    else:
        lines += ["## Best: none yet (no trial completed)", ""]
    lines += ["## Trials", "", "| trial | outcome | val macro-F1 per epoch | score | seconds | values |",
              "|---:|---|---|---:|---:|---|"]
    for t in summary["trials"]:
        per_epoch = ", ".join(f"{v:.3f}" for v in t["macro_f1_per_epoch"]) or "—"
        lines.append(f"| {t['number']} | {outcome(t, epochs)} | {per_epoch} | {cell(t['value'])} | "
                     f"{cell(None if t['seconds'] is None else round(t['seconds']))} | {shown(t['params'])} |")
    lines += ["", "## Search space", "", *[f"- {line}" for line in space.lines()], "", "## Plots", "",
              f"From {counts['complete']} complete trials (importances from few trials are noise).", ""]
    for name, (_, what) in PLOTS.items():
        reason = plots[name]
        lines.append(f"- **{name}**: {what}" + (f"\n\n  ![{name}](plots/{name}.png)" if reason is None
                                                 else f" ({reason})"))
    return "\n".join(lines) + "\n"
