"""training.hpo on a tiny model and the 6-person sample: the search file and its errors, a study that
records a failed trial and goes on, its report and plots, the best command line reproducing the best
trial's score, pruning stopping trials, and a study SIGKILLed mid-trial that resumes without
repeating a finished trial."""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="training.hpo needs the hpo extra: pip install -e '.[hpo]'")

from training.config import FitConfig  # noqa: E402
from training.hpo import HpoConfig, run_study  # noqa: E402
from training.hpo.cli import main  # noqa: E402
from training.hpo.space import SearchSpaceError, default_space, load_search_file, parse_space  # noqa: E402
from training.hpo.study import stored_trials, trial_progress  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_training_fit:tiny_net"
SLOW_TINY = "tests.test_training_fit:slow_tiny_net"
FLAKY = "tests.test_hpo:flaky_net"
_built = []


def flaky_net(num_classes: int):
    """Fails the first time it is built in a process (a trial with 'a bad combination'), then is tiny_net."""
    from tests.test_training_fit import tiny_net

    _built.append(num_classes)
    if len(_built) == 1:
        raise RuntimeError("this combination does not fit")
    return tiny_net(num_classes)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("hpo") / "sample", people=6, eval_people=0)


def write_search(path: Path, model: str) -> Path:
    path.write_text("lr: {low: 1.0e-3, high: 1.0e-1, log: true}\nloss: [ce, focal]\n"
                    "label_smoothing: {low: 0.0, high: 0.1}\nrotation: {low: 0, high: 20}\n"
                    f"model: [{model}]\n", encoding="utf-8")
    return path


def hpo_args(data: Path, out: Path, search: Path, *extra: str, trials: int = 3) -> list[str]:
    return ["--pipeline", "pil", "--data", str(data), "--size", "32", "--batch", "8", "--workers", "0",
            "--trials", str(trials), "--epochs-per-trial", "2", "--search", str(search), "--out", str(out), *extra]


# ---------------------------------------------------------------- the search space


@pytest.mark.parametrize("text, message", [
    ("learning_rate: {low: 0.1, high: 1}\n", "unknown search parameter 'learning_rate'"),
    ("lr: {low: 0.1, high: 0.01}\n", "low must be below high"),
    ("lr: {low: 0, high: 0.1, log: true}\n", "lr.low must be > 0"),
    ("weight_decay: {low: 0, high: 0.1, log: true}\n", "a log range needs low > 0"),
    ("lr: {low: 0.01, high: 0.1, log: true, step: 0.01}\n", "log or step, not both"),
    ("lr: {low: 0.01}\n", "a range is {low: L, high: H}"),
    ("loss: {low: 0, high: 1}\n", "a choice, not a range"),
    ("loss: [ce, hinge]\n", "unknown value 'hinge'"),
    ("optimizer: []\n", "an empty list"),
    ("loss: [focal]\nlabel_smoothing: {low: 0, high: 0.1}\n", "label_smoothing is searched, but it applies only"),
    ("label_smoothing: {low: 0, high: 1.5}\n", "label_smoothing.high must be within [0, 1)"),
    ("[lr, wd]\n", "a search file is a mapping"),
    ("lr: {low: 0.1\n", "YAML syntax error"),
])
def test_a_search_file_that_cannot_be_searched_is_one_line_naming_the_parameter(tmp_path, text, message):
    path = tmp_path / "search.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SearchSpaceError) as caught:
        load_search_file(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_label_smoothing_is_drawn_for_cross_entropy_only_and_focal_gamma_for_focal_only():
    space = parse_space({"loss": ["ce", "focal"], "label_smoothing": {"low": 0.0, "high": 0.2},
                         "focal_gamma": {"low": 1.0, "high": 3.0}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.suggest(study.ask()) for _ in range(30)]
    assert {values["loss"] for values in drawn} == {"ce", "focal"}
    for values in drawn:
        assert ("label_smoothing" in values) == (values["loss"] == "ce")
        assert ("focal_gamma" in values) == (values["loss"] == "focal")
        assert set(values) <= {"loss", "label_smoothing", "focal_gamma"}


def test_the_default_search_covers_the_recipe_and_fixes_the_model():
    space = default_space("resnet18")
    assert set(space.searched()) == {"lr", "weight_decay", "optimizer", "loss", "label_smoothing", "focal_gamma",
                                     "rotation", "crop_scale", "jitter"}
    assert space.params["model"].options == ("resnet18",)


def test_bad_input_is_refused_before_any_trial(data, tmp_path, capsys):
    search = write_search(tmp_path / "search.yaml", TINY)
    assert main(hpo_args(data, tmp_path / "a", search, "--storage", str(tmp_path / "no" / "dir" / "s.db"))) == 2
    assert "cannot write the study storage" in capsys.readouterr().err
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  - Resize: {size: [32, 32]}\n  - Normalize: {}\n", encoding="utf-8")
    args = [a for a in hpo_args(data, tmp_path / "b", search) if a not in ("--size", "32")]
    assert main([*args, "--spec", str(spec)]) == 2
    assert "rotation sets the spec's Rotate, and the train section of" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text("model: [resnet_eighteen]\n", encoding="utf-8")
    assert main(hpo_args(data, tmp_path / "c", tmp_path / "typo.yaml")) == 2
    assert "unknown timm model 'resnet_eighteen'" in capsys.readouterr().err
    assert not list((tmp_path / "a").glob("trial-*")) and not (tmp_path / "c" / "study.db").exists()


# ---------------------------------------------------------------- a study end to end


def test_a_study_records_a_failed_trial_goes_on_and_its_best_command_reproduces_the_best_score(data, tmp_path,
                                                                                              capsys):
    from training.fit import main as fit_main

    out = tmp_path / "study"
    _built.clear()
    assert main(hpo_args(data, out, write_search(tmp_path / "search.yaml", FLAKY))) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    states = [t["state"] for t in summary["trials"]]
    assert states[0] == "fail" and "this combination does not fit" in summary["trials"][0]["error"]
    assert states[1:] == ["complete", "complete"] and summary["trials_finished"] == 3
    for trial in summary["trials"][1:]:
        assert len(trial["macro_f1_per_epoch"]) == 2 and trial["value"] == max(trial["macro_f1_per_epoch"])
        assert not list((out / f"trial-{trial['number']:03d}").glob("**/*.pt"))  # weights dropped
    best = summary["best"]
    assert best["value"] == max(t["value"] for t in summary["trials"][1:])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"## Best: trial {best['number']}, val macro-F1 {best['value']:.4f}" in report
    assert "failed: RuntimeError: this combination does not fit" in report
    for name in ("history", "intermediate", "parallel"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000 and f"plots/{name}.png" in report
    command = (out / "best-command.txt").read_text(encoding="utf-8").strip()
    assert command == best["command"] and command in capsys.readouterr().out
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "training.fit"]
    assert fit_main(argv[3:]) == 0
    again = json.loads((out / "best" / "summary.json").read_text(encoding="utf-8"))
    assert again["best_macro_f1"] == best["value"]
    assert [row["macro_f1"] for row in again["history"]] == summary["trials"][best["number"]]["macro_f1_per_epoch"]


def test_a_pruned_trial_stops_after_the_epoch_the_pruner_judged(data, tmp_path):
    search = write_search(tmp_path / "search.yaml", TINY)
    fit = FitConfig(pipeline="pil", data=str(data), size=(32, 32), batch=8, workers=0, epochs=3)
    config = HpoConfig(fit=fit, trials=2, search=str(search), out=str(tmp_path / "study"))
    summary = run_study(config, pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # macro-F1 < 2: always
    assert [t["state"] for t in summary["trials"]] == ["pruned", "pruned"]
    assert [len(t["macro_f1_per_epoch"]) for t in summary["trials"]] == [1, 1]
    assert summary["best"] is None and not (tmp_path / "study" / "best-command.txt").exists()
    report = (tmp_path / "study" / "report.md").read_text(encoding="utf-8")
    assert report.count("pruned after epoch 1 of 3") == 2
    assert (tmp_path / "study" / "plots" / "intermediate.png").is_file()


# ---------------------------------------------------------------- kill and resume


def kill_once_a_trial_is_done_and_the_next_is_training(process: subprocess.Popen, storage: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        trials = trial_progress(storage)
        if any(state == "COMPLETE" for _, state, _ in trials) and any(
                state == "RUNNING" and epochs for _, state, epochs in trials):
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the study never reached its second trial's epochs: {process.communicate()}")


def test_a_study_killed_mid_trial_resumes_without_repeating_finished_trials(data, tmp_path, capsys):
    from optuna.trial import TrialState

    out = tmp_path / "study"
    search = write_search(tmp_path / "search.yaml", SLOW_TINY)
    args = hpo_args(data, out, search, "--pruner", "none")
    process = subprocess.Popen([sys.executable, "-m", "training.hpo", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_once_a_trial_is_done_and_the_next_is_training(process, out / "study.db")
    before = {t.number: t for t in stored_trials(out / "study.db")}
    assert before[0].state == TrialState.COMPLETE and before[1].state == TrialState.RUNNING

    assert main(hpo_args(data, out, search, "--pruner", "none")) == 2  # a study there: --resume, or another --out
    assert "already holds a run (study.db, trial-000, trial-001); pass --resume" in capsys.readouterr().err
    (tmp_path / "other.yaml").write_text(search.read_text().replace("high: 20", "high: 40"), encoding="utf-8")
    assert main(hpo_args(data, out, tmp_path / "other.yaml", "--resume")) == 2
    err = capsys.readouterr().err
    assert "created with another search space" in err and "search space rotation" in err

    assert main([*args, "--resume"]) == 0
    assert "trial 1 was interrupted and runs again" in capsys.readouterr().out
    after = stored_trials(out / "study.db")
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                        TrialState.COMPLETE]
    assert after[0].value == before[0].value and after[0].datetime_complete == before[0].datetime_complete
    assert after[1].user_attrs["interrupted"] and after[2].user_attrs["retry_of"] == 1
    assert after[2].params == before[1].params  # the interrupted trial's draw, run again whole
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["trials_finished"] == 3 and summary["counts"]["interrupted"] == 1
    assert not list((out / "trial-001").glob("**/*.pt"))


_interrupting = []


def interrupting_net(num_classes: int):
    """Ctrl-C while the second trial builds its model (the first time a process gets that far), then tiny_net."""
    from tests.test_training_fit import tiny_net

    _interrupting.append(num_classes)
    if len(_interrupting) == 2:
        raise KeyboardInterrupt
    return tiny_net(num_classes)


def terminated_net(num_classes: int):
    """SIGTERM to this process while the second trial builds its model, as a scheduler sends it."""
    import os

    from tests.test_training_fit import tiny_net

    _interrupting.append(num_classes)
    if len(_interrupting) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return tiny_net(num_classes)


def test_sigterm_stops_the_study_as_ctrl_c_does_with_exit_143(data, tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "study"
    _interrupting.clear()
    assert main(hpo_args(data, out, write_search(tmp_path / "search.yaml", "tests.test_hpo:terminated_net"),
                         "--pruner", "none", trials=2)) == 143
    assert "training.hpo: stopped by SIGTERM in trial 1 (it runs again on resume)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the study's handler is gone with it
    assert [t.user_attrs.get("interrupted", False) for t in stored_trials(out / "study.db")] == [False, True]


def test_ctrl_c_loses_only_the_running_trial_and_prints_the_resume_that_runs_it_again(data, tmp_path, capsys):
    from optuna.trial import TrialState

    out = tmp_path / "study"
    args = hpo_args(data, out, write_search(tmp_path / "search.yaml", "tests.test_hpo:interrupting_net"),
                    "--pruner", "none", trials=2)
    _interrupting.clear()
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "training.hpo: stopped by Ctrl-C in trial 1 (it runs again on resume)" in err
    assert "keeps 1 finished trials" in err and "Traceback" not in err
    resume = shlex.split(err.split("(resume: ", 1)[1].rsplit(")", 1)[0])
    assert resume[:3] == ["python", "-m", "training.hpo"] and resume[-3:] == ["--resume", "--out", str(out)]
    assert (out / "report.md").is_file()  # written on the way out
    assert main(resume[3:]) == 0
    trials = stored_trials(out / "study.db")
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["interrupted"] and trials[2].params == trials[1].params
