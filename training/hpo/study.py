"""The study: an Optuna study in an SQLite storage (OUT/study.db), TPE over the search space, a
pruner fed each trial's validation macro-F1 per epoch, and what a resume finds.

One process runs a study at a time (a lock on OUT). So a trial the storage holds as RUNNING when a
run starts was killed with its process: it is marked failed ("interrupted"), and its values are
queued to run again first; finished trials are kept, and ``--trials`` counts them. A trial that
raises is recorded as failed with its error, and the study goes on. A study is resumed only with
the search space and the run settings it was created with.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

from feeding.errors import FeedError
from training.hpo.config import DEFAULT_OUT, DEFAULT_STUDY, STUDY_FILE, HpoConfig
from training.hpo.report import shown
from training.hpo.space import SearchSpace, check_models, default_space, load_search_file
from training.hpo.trial import TrialPlan, base_spec, check_spec_fits, drop_checkpoints, fit_command, train_trial
from training.hpo.trial import trial_config

SETTINGS_ATTR = "feedbench"  # the study's user attribute holding its search space and run settings
LOCK_FILE = ".hpo.lock"
# The run settings a resumed study must share with its trials so far (the data set by content).
COMPARED = ("pipeline", "batch", "workers", "epochs", "model", "pretrained_file", "lr", "weight_decay", "optimizer",
            "scheduler", "warmup_epochs", "loss", "label_smoothing", "focal_gamma", "amp", "channels_last",
            "cudnn_benchmark", "loss_every", "accum_steps", "freeze_backbone", "val_fraction", "balanced", "seed",
            "device", "on_bad")


class HpoError(FeedError):
    """A study that cannot be opened, resumed or written, said in one line."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``signal`` "SIGTERM") during a study: the running trial is lost, the rest kept."""

    def __init__(self, out: Path, storage: str, trial: int | None, finished: int, signal: str = "Ctrl-C"):
        super().__init__(f"interrupted: {out}")
        self.out, self.storage, self.trial, self.finished, self.signal = out, storage, trial, finished, signal


# ---------------------------------------------------------------- where the study lives


def study_files(directory: Path) -> list[str]:
    """What marks ``directory`` as holding a study: its storage, or a trial's directory."""
    if not directory.is_dir():
        return []
    return [p.name for p in sorted(directory.iterdir()) if p.name == STUDY_FILE or p.name.startswith("trial-")]


def choose_study_dir(config: HpoConfig) -> tuple[Path, str]:
    """``training.runs.choose_directory`` for studies: runs/hpo or the next free runs/hpo-N; --resume: the newest."""
    from training.runs import choose_directory

    def saved_at(directory: Path) -> float | None:
        storage = directory / STUDY_FILE
        return storage.stat().st_mtime if storage.is_file() else None

    return choose_directory(config.out, DEFAULT_OUT, config.resume, study_files, saved_at,
                            f"study ({STUDY_FILE})")


@contextlib.contextmanager
def study_lock(out: Path):
    """Held while this process runs the study in ``out``: a second one is refused, not interleaved."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a")
    except OSError as error:
        raise HpoError(f"cannot write the study directory {out}: {error.strerror or error}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HpoError(f"{out}: another training.hpo is running this study; wait for it, or pass another "
                           "--out") from None
        yield


def storage_url(config: HpoConfig, out: Path) -> str:
    """The study's SQLAlchemy URL: --storage as given where it is a URL, else an SQLite file (default
    OUT/study.db) whose directory must be writable: an HpoError naming it otherwise."""
    if config.storage is not None and "://" in config.storage:
        return config.storage
    path = Path(config.storage) if config.storage is not None else out / STUDY_FILE
    place = path if path.exists() else path.parent
    if path.is_dir() or not place.exists() or not os.access(place, os.W_OK):
        why = ("it is a directory" if path.is_dir() else "its directory does not exist" if not place.exists()
               else "no write permission")
        raise HpoError(f"cannot write the study storage {path}: {why}")
    return f"sqlite:///{path.resolve()}"


def shown_storage(url: str) -> str:
    """An SQLite URL as its file's path; another URL as it is."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url


def open_storage(url: str):
    import optuna
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as error:
        raise HpoError(f"cannot open the study storage {url}: {str(error).splitlines()[0]}") from None


TRIAL_PROGRESS = ("SELECT t.number, t.state, COUNT(v.step) FROM trials t LEFT JOIN trial_intermediate_values v "
                  "ON v.trial_id = t.trial_id GROUP BY t.trial_id ORDER BY t.number")


def trial_progress(storage: Path) -> list[tuple[int, str, int]]:
    """(number, state, epochs reported) of each trial of the SQLite study file ``storage``, read-only, for
    watching a study from another process: opening it with Optuna while the study's own process is
    creating it races its table creation. Empty until the study has its tables."""
    import sqlite3

    if not Path(storage).exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{storage}?mode=ro", uri=True)) as db:
            return db.execute(TRIAL_PROGRESS).fetchall()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return []


def stored_trials(storage: Path, study_name: str = DEFAULT_STUDY) -> list:
    """The trials (Optuna's FrozenTrials) of the study in the SQLite file ``storage``; empty where there is
    none yet. For a study whose process has ended or has its tables (``trial_progress`` otherwise)."""
    import optuna

    if not Path(storage).exists():
        return []
    try:
        return optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}").trials
    except (KeyError, ValueError, optuna.exceptions.StorageInternalError):
        return []


# ---------------------------------------------------------------- the study and its settings


def study_settings(plan: TrialPlan, space: SearchSpace) -> dict:
    """What a resumed study must match: the search space, and the settings every trial shares."""
    from feeding.sources import dataset_fingerprint

    fit = plan.base.to_dict()
    dataset = dataset_fingerprint(plan.samples)
    run = {**{key: fit[key] for key in COMPARED}, "spec": plan.spec.record(), "folds": plan.folds,
           "dataset": {key: dataset[key] for key in ("images", "paths_sha256")}}
    return json.loads(json.dumps({"search_space": space.record(), "run": run}))  # as the storage gives it back


def settings_differences(stored: dict, wanted: dict) -> list[str]:
    """'search space lr: [..] in the study, [..] here' for each setting that differs."""
    lines = []
    for part, label in (("search_space", "search space "), ("run", "")):
        theirs, mine = stored.get(part, {}), wanted[part]
        for key in sorted(set(theirs) | set(mine)):
            if theirs.get(key, "(not searched)") != mine.get(key, "(not searched)"):
                lines.append(f"{label}{key}: {theirs.get(key, '(not searched)')} in the study, "
                             f"{mine.get(key, '(not searched)')} here")
    return lines


def open_study(config: HpoConfig, storage, url: str, settings: dict, pruner):
    """The study named ``config.study_name`` in ``storage``: created (recording ``settings``), or with
    --resume loaded, which requires the same settings; its sampler seeded anew for the trials to come."""
    import optuna

    where = shown_storage(url)
    exists = config.study_name in optuna.get_all_study_names(storage)
    if exists and not config.resume:
        raise HpoError(f"{where} already holds the study {config.study_name!r}; pass --resume to continue it, "
                       "or another --out / --study-name")
    if not exists and config.resume:
        raise HpoError(f"--resume: {where} holds no study {config.study_name!r}")
    study = optuna.create_study(storage=storage, study_name=config.study_name, direction="maximize",
                                pruner=pruner, load_if_exists=True)
    if not exists:
        study.set_user_attr(SETTINGS_ATTR, settings)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        raise HpoError(f"the study {config.study_name!r} in {where} was not made by training.hpo; pass another "
                       "--study-name")
    differences = settings_differences(stored, settings)
    if differences:
        listed = "\n  ".join(differences)
        raise HpoError(f"the study {config.study_name!r} in {where} was created with another search space or "
                       f"settings:\n  {listed}\npass the --search and flags it was made with, or another --out")
    study.sampler = create_sampler(config, len(study.trials))
    return study


def create_sampler(config: HpoConfig, trials_so_far: int):
    """TPE, its first trials random. Seeded by the seed and the trials so far: a resumed study does not
    draw its first run's random trials again."""
    import optuna

    startup = min(10, max(2, config.trials // 3))
    return optuna.samplers.TPESampler(seed=config.fit.seed + trials_so_far, n_startup_trials=startup)


def create_pruner(config: HpoConfig):
    """MedianPruner: a trial is stopped after an epoch whose macro-F1 is below the median of the earlier
    trials' at that epoch, once 2 trials have finished and from the second epoch on (the first says
    little). Hyperband: its brackets over 1..epochs. none: every trial runs its epochs."""
    import optuna

    epochs = config.fit.epochs * (config.folds or 1)
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def is_interrupted(trial) -> bool:
    return bool(trial.user_attrs.get("interrupted"))


def finished_trials(study) -> list:
    """The trials that count towards --trials: complete, pruned, or failed on their own (not interrupted)."""
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not is_interrupted(t))]


def requeue_interrupted(study, out: Path) -> list[int]:
    """Trials a kill left RUNNING become failed ("interrupted"), their checkpoints dropped; each
    interrupted trial's values are queued once to run again. The numbers of the trials requeued."""
    from optuna.trial import TrialState

    storage, requeued = study._storage, []  # Optuna has no public call to fail a trial of a dead process
    for trial in study.trials:
        if trial.state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            drop_checkpoints(out / trial_dir_name(trial.number))
    retried = {t.user_attrs.get("retry_of") for t in study.trials}  # queued (waiting) or run already
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.FAIL and is_interrupted(trial) and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            requeued.append(trial.number)
    return requeued


def trial_dir_name(number: int) -> str:
    return f"trial-{number:03d}"


# ---------------------------------------------------------------- the objective


def objective(plan: TrialPlan, space: SearchSpace, out: Path):
    """Optuna's objective: draw, train with training.fit's loop, report each epoch, score."""
    import optuna

    def run(trial) -> float:
        values = space.suggest(trial)
        trial_dir = out / trial_dir_name(trial.number)
        config = trial_config(plan, values, trial_dir)
        trial.set_user_attr("command", fit_command(config, plan.folds, str(out / "best")))
        retry = trial.user_attrs.get("retry_of")
        print(f"== trial {trial.number}{f' (again: trial {retry} was interrupted)' if retry is not None else ''}: "
              f"{shown(values, ' ')}", flush=True)
        try:
            return train_trial(plan, config, pruning_reporter(trial, plan))
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")
            raise
        finally:
            drop_checkpoints(trial_dir)

    return run


def pruning_reporter(trial, plan: TrialPlan):
    """``train_trial``'s report: the epoch's macro-F1 to the trial; a pruned trial raises TrialPruned."""
    import optuna

    epochs = plan.base.epochs
    last = epochs * (plan.folds or 1) - 1  # stopping after the last epoch would save nothing, and lose its score

    def report(step: int, macro_f1: float) -> None:
        trial.report(macro_f1, step)
        if step < last and trial.should_prune():
            fold, epoch = divmod(step, epochs)
            trial.set_user_attr("pruned_after", step + 1)
            where = f"epoch {epoch + 1} of {epochs}" + (f", fold {fold + 1}" if plan.folds else "")
            raise optuna.TrialPruned(f"pruned after {where}: val macro-F1 {macro_f1:.4f}")

    return report


def announce(total: int):
    """After each trial, one line: its outcome, and the best so far."""
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        done = len(finished_trials(study))
        if trial.state == TrialState.COMPLETE:
            outcome = f"val macro-F1 {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned after epoch {trial.user_attrs.get('pruned_after', '?')}"
        else:
            outcome = f"failed ({trial.user_attrs.get('error', 'no error recorded')}); the study goes on"
        best = best_trial(study)
        best_line = f"; best so far: trial {best.number}, {best.value:.4f}" if best is not None else ""
        print(f"trial {trial.number}: {outcome} [{done}/{total} trials]{best_line}", flush=True)

    return callback


def best_trial(study):
    from optuna.trial import TrialState

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


# ---------------------------------------------------------------- the whole search


def trial_plan(config: HpoConfig, space: SearchSpace) -> TrialPlan:
    """What every trial shares: the data set, and the feed and step resolved once (``--pipeline best``:
    the recommendation for the search's first model), written into the base config explicitly."""
    from training.data import load_samples
    from training.recommendation import load_recommendation, resolve_feed, resolve_step

    fit = replace(config.fit, model=space.params["model"].options[0])
    samples = load_samples(fit)
    recommendation = load_recommendation(fit, samples) if fit.follows_recommendation else None
    spec = fit.spec
    if spec is None:
        size = resolve_feed(fit, recommendation).size
        spec = base_spec(size)
        fit = replace(fit, size=None)
    fit = resolve_feed(replace(fit, spec=spec), recommendation)
    step = resolve_step(fit, recommendation, fit.device)
    fit = replace(fit, amp=step.amp, channels_last=step.channels_last, cudnn_benchmark=step.cudnn_benchmark,
                  loss_every=step.loss_every)
    return TrialPlan(fit, spec, samples, config.folds)


def search_space(config: HpoConfig) -> SearchSpace:
    """--search's space (or the default), the model fixed to --model where the search does not pick it."""
    from training.hpo.space import Choice

    space = load_search_file(config.search) if config.search else default_space(config.fit.model)
    if "model" not in space.params:
        space = SearchSpace({**space.params, "model": Choice((config.fit.model,))}, space.name)
    check_models(space)
    return space


def run_study(config: HpoConfig, pruner=None) -> dict:
    """Run (or resume) the study; return its summary, also in OUT/summary.json with OUT/report.md.
    ``pruner``: an Optuna pruner in place of ``config.pruner``'s."""
    import optuna

    from training.hpo.report import write_report
    from training.loggers import check_loggers

    check_loggers(config.fit.loggers)
    space = search_space(config)
    out, which = choose_study_dir(config)
    print(which, flush=True)
    with study_lock(out):
        plan = trial_plan(config, space)
        check_spec_fits(space, plan.spec)
        url = storage_url(config, out)
        quiet_optuna()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = open_study(config, open_storage(url), url, study_settings(plan, space),
                               pruner or create_pruner(config))
        if "wandb" in config.fit.loggers:
            os.environ.setdefault("WANDB_RUN_GROUP", f"{config.study_name}-{out.resolve().name}")
        requeued = requeue_interrupted(study, out)
        left = config.trials - len(finished_trials(study))
        print(start_line(study, config, plan, space, left, requeued), flush=True)
        started = time.monotonic()
        try:
            with sigterm_stops_the_study() as terminated:
                if left > 0:
                    study.optimize(objective(plan, space, out), n_trials=left, timeout=config.timeout_s,
                                   catch=(Exception,), callbacks=[announce(config.trials)], gc_after_trial=True)
        except KeyboardInterrupt:
            running = [t.number for t in study.trials if is_interrupted(t) and t.number not in requeued]
            write_report(study, out, config, plan, space, url, time.monotonic() - started)
            raise StudyInterrupted(out, shown_storage(url), running[-1] if running else None,
                                   len(finished_trials(study)), "SIGTERM" if terminated.is_set() else "Ctrl-C") \
                from None
        return write_report(study, out, config, plan, space, url, time.monotonic() - started)


@contextlib.contextmanager
def sigterm_stops_the_study():
    """While inside, a SIGTERM stops the study as a Ctrl-C does (the running trial is lost, the finished
    ones are in the storage): a trial does not checkpoint, so there is nothing to wait for. The event
    yielded says whether it came. training.fit's loop leaves this handler in place (``stops_at_once``)."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum, frame) -> None:
        received.set()
        raise KeyboardInterrupt

    stop.stops_at_once = True
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as a failure: a traceback, then 'Trial N failed with value
    None.'; training.hpo says it in one line, so both are left out (a real failure keeps them)."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted: set[str] = set()  # "Trial N" of the trials a Ctrl-C stopped

    def filter(self, record: logging.LogRecord) -> bool:
        trial = " ".join(str(record.msg).split()[:2])
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted.add(trial)
            return False
        return not (trial in self.interrupted and "failed with value" in str(record.msg))


def quiet_optuna() -> None:
    """Optuna's warnings only (training.hpo prints each trial's outcome), without a Ctrl-C's traceback."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterruptTraceback) for f in handler.filters):
            handler.addFilter(_NoInterruptTraceback())


def start_line(study, config: HpoConfig, plan: TrialPlan, space: SearchSpace, left: int, requeued: list[int]) -> str:
    finished = len(finished_trials(study))
    again = f"; trial {', '.join(map(str, requeued))} was interrupted and runs again" if requeued else ""
    base = plan.base
    return (f"study {config.study_name!r}: {finished} of {config.trials} trials done, {max(0, left)} to run{again}; "
            f"each {base.epochs} epochs on {base.pipeline} (batch {base.batch}, {base.workers} workers, "
            f"{plan.spec.train.output_size[0]}x{plan.spec.train.output_size[1]}), "
            f"{f'{plan.folds} folds' if plan.folds else 'a person-level split'}; searching "
            f"{', '.join(space.searched()) or 'nothing'}")
