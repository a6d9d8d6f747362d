"""A Ctrl-C during ``feedbench tune`` keeps what was measured: a partial report (JSON and Markdown, marked
partial, saying in which phase it stopped and what it kept), no recommendation.json, exit 130 within
seconds, and no worker process left behind.

The real console script gets a real SIGINT (to its whole process group, as a terminal sends it) in
the search, the end-to-end check and the exhaustive grid; the phases it cannot be timed into from
outside are reached in-process, with made-up measurements that raise KeyboardInterrupt on cue.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

FEEDBENCH = Path(sys.executable).parent / "feedbench"
REPO = Path(__file__).resolve().parents[1]
# A Ctrl-C ends the run within a few seconds; the bound leaves room for this shared 2-core host.
SECONDS_TO_EXIT = 10.0
MEASURED = re.compile(r"tune: measurements: (\d+)point")


def measured_so_far(progress: str) -> int:
    """The largest measurement count the progress bar has shown."""
    return max((int(n) for n in MEASURED.findall(progress)), default=0)


def group_members(group: int) -> list[str]:
    """The live (not zombie) processes of process group ``group``, as 'pid command' (Linux /proc)."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                command, fields = fh.read().rsplit(")", 1)
        except OSError:
            continue  # ended in between
        state, _, pgrp = fields.split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(f"{pid} {command.split('(', 1)[1]}")
    return members


def interrupt_tune(args: list[str], ready) -> tuple[int, float, str, str, int]:
    """Run ``feedbench tune ARGS`` in a process group of its own, send the group SIGINT once
    ``ready(stderr so far)``, and return (exit code, seconds from the SIGINT to the exit, stdout,
    stderr, the count of measurements the bar showed at the SIGINT)."""
    if not FEEDBENCH.exists():
        pytest.fail(f"console script missing at {FEEDBENCH}: is the package installed (pip install -e .)?")
    # the tiny model is tests.test_tune:tiny_net, imported from the repository
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    stdout: list[str] = []
    stderr: list[str] = []
    with subprocess.Popen([str(FEEDBENCH), "tune", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, start_new_session=True) as process:
        readers = [threading.Thread(target=lambda: stdout.append(process.stdout.read()), daemon=True),
                   # the bar's updates end in \r, not \n: read by character
                   threading.Thread(target=lambda: stderr.extend(iter(lambda: process.stderr.read(1), "")),
                                    daemon=True)]
        for reader in readers:
            reader.start()
        try:
            deadline = time.monotonic() + 180
            while not ready("".join(stderr)):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"tune ended or stalled before the interrupt point (exit {process.poll()}):\n"
                                + "".join(stderr)[-3000:])
                time.sleep(0.02)
            seen = measured_so_far("".join(stderr))
            os.killpg(process.pid, signal.SIGINT)
            sent = time.monotonic()
            code = process.wait(timeout=60)
            elapsed = time.monotonic() - sent
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for reader in readers:  # a worker left holding the pipes would keep them open: the check below names it
            reader.join(timeout=10)
    left = group_members(process.pid)
    assert not left, f"processes left behind by the interrupted tune: {left}"
    return code, elapsed, "".join(stdout), "".join(stderr), seen


def partial_outputs(out: Path, earlier: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The partial run's record and Markdown; nothing else is written (no plot, no recommendation.json),
    and the files named ``earlier`` (an earlier run's) are left there."""
    written = sorted(path.name for path in out.iterdir() if path.name not in earlier)
    (record_path,) = out.glob("tune-*-partial.json")
    assert written == sorted([record_path.name, record_path.with_suffix(".md").name]), written
    return json.loads(record_path.read_text()), record_path.with_suffix(".md").read_text()


# The tiny model of tests.test_tune, two shapes, 0-2 workers, short end-to-end checks; each case adds its pipelines.
SMALL = ["--model", "tests.test_tune:tiny_net", "--device", "cpu", "--sizes", "48,32", "--workers-max", "2",
         "--batches", "4", "--e2e-batches", "3", "--e2e-min-s", "0.5", "--budget-s", "120"]


@pytest.mark.parametrize("phase,extra,ready", [
    # pil's climb first (0, 1, 2 workers): the Ctrl-C lands as its workers start
    ("search", ["--pipelines", "pil,albumentations"], lambda progress: measured_so_far(progress) >= 2),
    # the shortest search (two feeds, one shape) before the checks
    ("end-to-end check", ["--pipelines", "pil", "--sizes", "32", "--workers-max", "1", "--e2e-min-s", "2"],
     lambda progress: "end-to-end check" in progress),
    # (the exhaustive grid's Ctrl-C, once swallowed: in-process below, on made-up measurements)
])
def test_a_real_ctrl_c_writes_the_partial_report_and_exits_130(phase, extra, ready, sample_dir, tmp_path):
    out = tmp_path / "results"
    code, elapsed, stdout, stderr, seen = interrupt_tune(
        [*SMALL, *extra, "--data", str(sample_dir), "--out", str(out)], ready)
    assert code == 130, stderr[-3000:]
    assert elapsed < SECONDS_TO_EXIT, f"{elapsed:.1f} s from the Ctrl-C to the exit"
    record, report = partial_outputs(out)
    stopped = record["interrupted"]
    assert record["partial"] is True and stopped["phase"] == phase
    measurements = record["search"]["measurements"]
    assert stopped["measurements_kept"] == len(measurements) >= max(seen, 1)
    assert all(m["images_per_sec"] > 0 for m in measurements if m["side"] in ("feed", "consume"))
    assert "pipeline" not in record  # no pick: nothing for training.fit to take as a recommendation
    note = f"interrupted (Ctrl-C) during the {phase}: {len(measurements)} measurement(s)"
    assert stopped["note"].startswith(note) and note in report and note in stderr
    assert "(partial: interrupted)" in report and f"## Measurements ({len(measurements)})" in report
    assert "partial: " in stdout and stderr.splitlines()[-1].startswith(f"feedbench tune: {note}")
    if phase == "end-to-end check":  # the search had ended: its ranking is kept, best first
        assert record["search"]["ranked"] and record["search"]["interrupted"] is None
        assert "best predicted so far: pil" in stdout
    else:
        assert record["search"]["interrupted"] == "interrupted (Ctrl-C)"


# ---------------------------------------------------------------- in-process, on made-up measurements


@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """Python's own SIGINT handler while a test runs: a library started by an earlier test in this process
    (Ray's init) may have left its own, which the tuner rightly leaves in place, and which these tests
    would then exercise instead."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class Cue:
    """Made-up measurements (feed 100 + 50 img/s per worker, the model 300 img/s, end to end 250) that
    raise KeyboardInterrupt at the ``feed_stop``-th feed measurement or the ``check_stop``-th end-to-end check.

    ``worker_dies``: at ``feed_stop`` a real SIGINT instead, which Python swallows (as in an at-fork
    hook), and the error of a worker that the Ctrl-C stopped as it started."""

    def __init__(self) -> None:
        self.feed_stop: int | None = None
        self.check_stop: int | None = None
        self.worker_dies = False
        self.feeds = self.checks = 0

    def feed_point(self, samples, config, batches, device, threads, channels_last):
        from bench.tune.forecast import FeedPoint
        from tests.conftest import ctrl_c_swallowed_then_a_worker_dies

        self.feeds += 1
        if self.feeds == self.feed_stop and not self.worker_dies:
            raise KeyboardInterrupt
        if self.feeds == self.feed_stop:
            ctrl_c_swallowed_then_a_worker_dies()
        return FeedPoint(100.0 + 50 * config.workers), ()

    def check_end_to_end(self, config, samples, best):
        self.checks += 1
        if self.checks == self.check_stop:
            raise KeyboardInterrupt
        return {"measured_ips": 250.0 - self.checks, "data_wait_fraction": 0.1, "batches": 3, "seconds": 0.9,
                "epochs": 2, "model_threads": 1, "decode_device": "cpu", "notes": [], "step": {}}, []


@pytest.fixture
def cue(monkeypatch) -> Cue:
    from bench.tune import measure as tune_measure
    from bench.tune.forecast import ConsumePoint

    made_up = Cue()
    monkeypatch.setattr(tune_measure, "feed_point", made_up.feed_point)
    monkeypatch.setattr(tune_measure, "consume_point", lambda config: ConsumePoint(300.0))
    monkeypatch.setattr(tune_measure, "check_end_to_end", made_up.check_end_to_end)
    monkeypatch.setattr(tune_measure, "loader_stage", lambda config, samples, best: "decode")
    return made_up


FAST = ["--model", "tests.test_tune:tiny_net", "--sizes", "48,32", "--workers-max", "2", "--batches", "4",
        "--pipelines", "pil"]


def tune_here(sample_dir: Path, out: Path, *extra: str) -> int:
    from bench.tune import tune_main

    return tune_main([*FAST, *extra, "--data", str(sample_dir), "--out", str(out)])


def test_a_ctrl_c_in_the_search_keeps_the_measurements_and_leaves_an_earlier_recommendation(
        cue, sample_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    earlier = out / "recommendation.json"
    earlier.write_text('{"made": "by an earlier run"}\n')
    cue.feed_stop = 3  # pil's climb: 0 and 1 workers measured, the Ctrl-C in the third
    assert tune_here(sample_dir, out) == 130
    record, report = partial_outputs(out, earlier=(earlier.name,))
    assert [(m["side"], m["workers"]) for m in record["search"]["measurements"]] == [("feed", 0), ("feed", 1)]
    assert record["interrupted"] == {"phase": "search", "measurements_kept": 2, "end_to_end_checks_kept": 0,
                                     "note": "interrupted (Ctrl-C) during the search: 2 measurement(s) kept"}
    assert earlier.read_text() == '{"made": "by an earlier run"}\n'  # a partial run recommends nothing
    captured = capsys.readouterr()
    assert "recommendation.json is not written" in captured.out and "recommendation.json is not written" in report
    assert captured.err.rstrip().endswith("feedbench tune: interrupted (Ctrl-C) during the search: 2 measurement(s) "
                                          "kept; no recommendation: rerun for one")


def test_a_ctrl_c_in_the_end_to_end_check_keeps_the_checks_made(cue, sample_dir, tmp_path, capsys):
    out = tmp_path / "results"
    cue.check_stop = 2
    assert tune_here(sample_dir, out) == 130
    record, report = partial_outputs(out)
    assert record["interrupted"]["phase"] == "end-to-end check"
    assert record["interrupted"]["end_to_end_checks_kept"] == 1 and "and 1 end-to-end check(s) kept" in report
    (checked,) = record["checked"]
    assert checked["measured_ips"] == 249.0 and checked["end_to_end"]["batches"] == 3
    assert checked["pipeline"] == record["search"]["ranked"][0]["pipeline"] == "pil"
    assert [row["size"] for row in record["shape_profile"]["rows"]] == [[48, 48], [32, 32]]
    assert "## Checked end to end" in report and "## The pick at every shape" in report
    assert "best predicted so far: pil, 2 workers" in capsys.readouterr().out


def test_a_ctrl_c_during_the_exhaustive_check_keeps_the_grid_and_the_tuners_measurements(
        cue, sample_dir, tmp_path):
    out = tmp_path / "results"
    cue.feed_stop = 8  # the grid's six feeds (0-2 workers at two shapes), then the tuner's climb: its second
    assert tune_here(sample_dir, out, "--exhaustive") == 130
    record, report = partial_outputs(out)
    grid, tuner = record["search"]["measurements"], record["tuner_search"]["measurements"]
    assert record["search"]["mode"] == "exhaustive" and sum(m["side"] == "feed" for m in grid) == 6
    assert [(m["side"], m["workers"]) for m in tuner] == [("feed", 0)]
    assert record["interrupted"]["phase"] == "exhaustive check (the tuner's search)"
    assert record["interrupted"]["measurements_kept"] == len(grid) + 1 and "exhaustive_check" not in record
    assert "## The tuner's search for the exhaustive check (1)" in report


def test_a_ctrl_c_in_the_exhaustive_grid_is_not_swallowed(cue, sample_dir, tmp_path):
    out = tmp_path / "results"
    cue.feed_stop = 4
    assert tune_here(sample_dir, out, "--exhaustive") == 130
    record, _ = partial_outputs(out)
    assert record["interrupted"]["phase"] == "exhaustive grid" and record["tuner_search"] is None
    assert sum(m["side"] == "feed" for m in record["search"]["measurements"]) == 3


def test_a_worker_stopped_by_the_ctrl_c_ends_the_run_as_interrupted(cue, sample_dir, tmp_path, capsys):
    """A terminal's Ctrl-C reaches the loader's workers too: one stopped as it starts fails the
    measurement in hand, where the tuner's own KeyboardInterrupt was swallowed."""
    out = tmp_path / "results"
    cue.feed_stop, cue.worker_dies = 3, True
    assert tune_here(sample_dir, out) == 130
    record, _ = partial_outputs(out)
    assert record["interrupted"]["phase"] == "search" and record["interrupted"]["measurements_kept"] == 2
    assert record["search"]["interrupted"] == "interrupted (Ctrl-C)" and "error" not in capsys.readouterr().err


def test_a_ctrl_c_that_python_swallows_is_sent_again_and_remembered():
    """Python swallows an exception raised in an at-fork hook (a DataLoader forking its workers) or a
    ``__del__``: the run's CtrlC sends the Ctrl-C again, and ``check`` raises it at the next measurement."""
    from bench.interrupt import CtrlC

    class Swallowing:
        def __del__(self):  # the handler's KeyboardInterrupt is raised here, and reported, not propagated
            os.kill(os.getpid(), signal.SIGINT)

    hook = sys.unraisablehook
    watch = CtrlC()
    with watch.installed():
        with pytest.raises(KeyboardInterrupt):  # the Ctrl-C, sent again
            Swallowing()
            time.sleep(5)  # without a second Ctrl-C, nothing would end this
        with pytest.raises(KeyboardInterrupt):
            watch.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and sys.unraisablehook is hook
    CtrlC().check()  # a watch whose key was not pressed raises nothing


def test_a_spent_budget_with_nothing_measured_keeps_its_message(cue, sample_dir, tmp_path, monkeypatch, capsys):
    from bench.tune import measure as tune_measure

    def spent(self):
        raise tune_measure.BudgetExceeded("the 20 s budget is spent")

    monkeypatch.setattr(tune_measure.Measurer, "check_budget", spent)
    assert tune_here(sample_dir, tmp_path / "results") == 2
    assert capsys.readouterr().err.strip().endswith("feedbench tune: error: nothing was measured before the budget "
                                                    "ran out (the 20 s budget is spent); raise --budget-s")
    assert not (tmp_path / "results").exists()


def test_a_ctrl_c_before_the_first_measurement_writes_nothing(cue, sample_dir, tmp_path, monkeypatch, capsys):
    import feeding.sources

    def listing_interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(feeding.sources, "discover", listing_interrupted)
    assert tune_here(sample_dir, tmp_path / "results") == 130
    assert capsys.readouterr().err.strip() == "feedbench tune: interrupted; no report written"
    assert not (tmp_path / "results").exists()


def test_a_second_ctrl_c_while_writing_leaves_whole_files(cue, sample_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    real_replace = os.replace

    def replace(source, target):  # the second Ctrl-C lands as the Markdown is put in place
        if str(target).endswith(".md"):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    cue.feed_stop = 3
    assert tune_here(sample_dir, out) == 130
    assert "interrupted while writing the reports; each file in" in capsys.readouterr().err
    (written,) = out.iterdir()  # the record, whole; no Markdown and no temporary file
    assert written.name.endswith("-partial.json") and json.loads(written.read_text())["partial"] is True


def test_fit_refuses_a_partial_record_in_one_line(cue, sample_dir, tmp_path, capsys):
    from training.fit import main as fit_main

    out = tmp_path / "results"
    cue.feed_stop = 3
    assert tune_here(sample_dir, out) == 130
    (partial,) = out.glob("tune-*-partial.json")
    capsys.readouterr()
    assert fit_main(["--pipeline", "best", "--recommendation", str(partial), "--data", str(sample_dir),
                     "--model", "tests.test_tune:tiny_net", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith(f"training.fit: error: --pipeline best: {partial} is a partial tuning record "
                           "(interrupted during the search): it recommends nothing; run `feedbench tune")
