"""``feedbench compare``: every row measured on the same tiny data set, outputs and bad input."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bench import compare
from bench.compare import NaiveTorchvisionDataset, compare_main, config_from_args, make_parser, measuring
from bench.measure import FeedMeasurement
from bench.stats import summarize
from feeding.sources import discover
from tests.conftest import ctrl_c_swallowed_then_a_worker_dies

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
TINY = ["--size", "64", "--batch", "4", "--batches", "2", "--repeats", "1", "--warmup", "1", "--rounds", "2"]
USER_LOADER = "tests.test_compare:make_loader"
USER_DATASET = "tests.test_compare:make_dataset"


# ---------------------------------------------------------------- factories for --loader


def make_dataset() -> TensorDataset:
    return TensorDataset(torch.zeros(24, 3, 8, 8), torch.zeros(24, dtype=torch.int64))


def make_loader() -> DataLoader:
    return DataLoader(make_dataset(), batch_size=4, shuffle=True, drop_last=True)


def make_number() -> int:
    return 42


def make_unpaired() -> list:
    return [torch.zeros(4, 3)] * 3  # batches that are not (images, labels) pairs


class FailsAfterOneBatch:
    """A user's loader whose second batch raises, as a loader with a bug in its transform does."""

    batch_size = 4

    def __iter__(self):
        yield torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64)
        raise RuntimeError("decoder crashed on batch 2\nmore detail on the next line")


def make_failing_loader() -> FailsAfterOneBatch:
    return FailsAfterOneBatch()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("compare") / "tiny", people=3, eval_people=0)  # 21 images


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    """One compare run over every row and both kinds of user loader; (exit code, report, out dir)."""
    out = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEEDBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        code = compare_main(["--data", str(tiny_data), *TINY, "--workers-max", "2", "--out", str(out),
                             "--loader", USER_LOADER, "--loader", USER_DATASET])
    reports = list(out.glob("*.json"))
    assert len(reports) == 1
    return code, json.loads(reports[0].read_text()), out


# ---------------------------------------------------------------- the full run


def test_writes_markdown_chart_and_json_named_after_the_conditions(full_run):
    code, report, out = full_run
    assert code == 0
    stem = "compare-tiny-64-b4-"
    assert {p.suffix for p in out.glob(stem + "*c.*")} == {".md", ".png", ".json"}
    assert (next(out.glob("*.png")).read_bytes()[:8]) == b"\x89PNG\r\n\x1a\n"
    md = next(out.glob("*.md")).read_text()
    assert "| naive |" in md and "× naive" in md and "decode-only" in md
    assert f"]({next(out.glob('*.png')).name})" in md  # the chart, next to the table
    assert report["command"] in md and "--loader " + USER_LOADER in report["command"]
    assert report["machine"]["pil"]["distribution"] in md
    assert report["commit"] and report["created"] and report["interrupted"] is False


def test_every_row_has_a_rate_and_a_best_worker_count_within_the_sweep(full_run):
    _, report, _ = full_run
    rows = {row["name"]: row for row in report["rows"]}
    expected = ["naive", "pil", "albumentations", *(["dali"] if HAS_DALI else []), "literal", "decode-only",
                USER_LOADER, USER_DATASET]
    assert list(rows) == expected
    assert report["rounds"] == 2
    for name in expected:
        row = rows[name]
        assert row["images_per_sec"]["median"] > 0
        # The best point is the sweep's best; the row's rate is that point's median over the paired rounds.
        medians = [point["images_per_sec"]["median"] for point in row["sweep"]]
        best = row["sweep"][medians.index(max(medians))]
        assert (row["best_workers"], row["best_executor"]) == (best["workers"], best["executor"])
        assert len(row["rounds_images_per_sec"]) == 2 and min(row["rounds_images_per_sec"]) > 0
        assert row["images_per_sec"]["median"] == pytest.approx(np.median(row["rounds_images_per_sec"]))
        # Clean data: the feedbench rows skip nothing; a user's loader does not say what it skipped.
        assert row["failed"] is None and row["skipped_files"] == (None if name.startswith("tests.") else 0)
        if name == USER_LOADER:  # measured as given: its own worker count, one point
            assert row["best_workers"] == 0 and len(row["sweep"]) == 1
        elif name == "decode-only":  # the limit: the better of processes and threads
            points = [(point["workers"], point["executor"]) for point in row["sweep"]]
            assert points == [(1, "process"), (2, "process"), (1, "thread"), (2, "thread")]
            assert row["best_executor"] in ("process", "thread")
        else:
            assert [point["workers"] for point in row["sweep"]] == [1, 2]
            assert 1 <= row["best_workers"] <= 2
    small = (os.cpu_count() or 1) <= 4  # the planner's pick for a fully fused plan, on a small machine
    assert rows["albumentations"]["best_executor"] == ("thread" if small else "process")
    assert rows["pil"]["best_executor"] == "process"


def test_each_row_says_what_it_does_and_how_faithful_its_picture_is(full_run):
    _, report, out = full_run
    rows = {row["name"]: row for row in report["rows"]}
    assert "Normalize in the workers" in rows["naive"]["does"]
    assert "one OpenCV warpAffine" in rows["albumentations"]["does"] and "training device" in rows["pil"]["does"]
    assert "one call per op in the written order" in rows["literal"]["does"]
    scored = [name for name in ("naive", "pil", "albumentations", "literal") if rows[name]["fidelity"]]
    assert scored == ["naive", "pil", "albumentations", "literal"]
    for name in ("pil", "albumentations"):  # the fused paths against the written order's reference
        assert rows[name]["fidelity"]["worst_db"] >= 30.0, rows[name]["fidelity"]
    assert rows["literal"]["fidelity"]["median_db"] >= 40.0  # the reference's own steps
    assert rows["decode-only"]["fidelity"] is None and rows[USER_LOADER]["fidelity"] is None
    md = next(out.glob("*.md")).read_text()
    assert "PSNR dB median / worst" in md and "What each row does:" in md and "the draws pinned" in md
    assert "Rotate(degrees=(10.0, 10.0))" in report["fidelity_spec"]


def test_ratios_are_medians_of_the_paired_per_round_ratios(full_run):
    _, report, _ = full_run
    rounds = {row["name"]: np.array(row["rounds_images_per_sec"]) for row in report["rows"]}
    median = {row["name"]: row["images_per_sec"]["median"] for row in report["rows"]}

    def paired(a: str, b: str) -> float:
        return float(np.median(rounds[a] / rounds[b]))

    for row in report["rows"]:
        assert row["ratio_to_naive"] == pytest.approx(paired(row["name"], "naive"))
        assert row["ratio_to_decode_only"] == pytest.approx(paired(row["name"], "decode-only"))
    ratios = report["ratios"]
    best = max(("pil", "albumentations"), key=median.get)
    assert ratios["best_feedbench_cpu"] == best
    assert ratios["feedbench_cpu_over_naive"] == pytest.approx(paired(best, "naive"))
    assert ratios["feedbench_cpu_over_decode_only"] == pytest.approx(paired(best, "decode-only"))
    if HAS_DALI:
        assert ratios["feedbench_cpu_over_dali_cpu"] == pytest.approx(paired(best, "dali"))


def test_paired_ratio_cancels_a_slowdown_that_hits_both_rows_in_a_round():
    def row(name: str, rounds: tuple[float, ...]) -> compare.Row:
        return compare.Row(name, "feedbench", (), rounds)

    # Round 2 ran at half speed for everyone: the ratio of medians says 1.5x, each round says 2x.
    fast, slow = row("albumentations", (200.0, 100.0, 220.0)), row("naive", (100.0, 50.0, 110.0))
    assert compare.ratio(fast, slow) == pytest.approx(2.0)
    assert compare.ratio(fast, None) is None


# ---------------------------------------------------------------- the naive reference


def test_naive_dataset_rotates_before_resizing_and_normalizes_floats_on_the_cpu(tiny_data):
    samples = discover(tiny_data)
    dataset = NaiveTorchvisionDataset(samples.paths, samples.labels, size=(64, 48), degrees=10)
    steps = [type(t).__name__ for t in dataset.transform.transforms]
    assert steps == ["RandomRotation", "Resize", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    image, label = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 48)
    assert image.min() < 0 < image.max() and image.abs().max() < 3  # (x/255 - mean) / std
    assert label == samples.labels[0]


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_decode_only_decodes_full_size_but_collates_nothing(tiny_data, executor):
    samples = discover(tiny_data)
    with compare.decode_only_feeder(samples, batch=4, workers=1, executor=executor) as feeder:
        images, labels = next(iter(feeder))
        assert feeder.executor == executor
    assert images.shape == (4, 3, 1, 1) and set(labels.tolist()) <= set(samples.labels.tolist())
    transform = compare.DecodeOnlyTransform(64_000_000)
    assert transform(samples.paths[0], np.random.default_rng(0)).shape == (1, 1, 3)
    assert transform.decoded_shapes == [(512, 384, 3)]  # decoded at full size, then dropped


# ---------------------------------------------------------------- bad input and interruption


@pytest.mark.parametrize("args,message", [
    (["--loader", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
    (["--loader", "tests.test_compare:no_such_factory"], "has no attribute 'no_such_factory'"),
    (["--loader", "tests.test_compare"], "expected module:factory"),
    (["--loader", "tests.test_compare:make_number"], "not iterable"),
    (["--pipelines", "naive", "tensorflow"], "unknown pipeline(s) tensorflow"),
    (["--workers-max", "0"], "--workers-max must be >= 1"),
])
def test_bad_input_gives_a_clear_message_and_exit_code_2(args, message, tiny_data, tmp_path, capsys):
    code = compare_main(["--data", str(tiny_data), *TINY, "--workers-max", "1", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def _interrupted_run(tiny_data, out, monkeypatch, interrupt_at: int, worker_dies: bool = False) -> tuple[int, dict]:
    """compare over naive, pil and decode-only whose ``interrupt_at``-th measurement is a Ctrl-C;
    measurement k reports 100 * k img/s. ``worker_dies``: a real SIGINT instead, which Python swallows
    (as in an at-fork hook), and the error of a worker that the Ctrl-C stopped as it started."""
    calls = []

    def fake_measure(feeder, batches, repeats, warmup, whole_epochs=False):
        calls.append(feeder)
        if len(calls) == interrupt_at and worker_dies:
            ctrl_c_swallowed_then_a_worker_dies()
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        rate = summarize([100.0 * len(calls)])
        return FeedMeasurement(rate, summarize([0.1]), images=8, batches=2, epochs=1, windows=(rate.median,))

    monkeypatch.setattr(measuring, "measure_feeder", fake_measure)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not one an earlier test's library left
    try:
        code = compare_main(["--data", str(tiny_data), *TINY, "--workers-max", "2", "--out", str(out),
                             "--pipelines", "naive", "pil", "decode-only"])
    finally:
        signal.signal(signal.SIGINT, previous)
    return code, json.loads(next(out.glob("*.json")).read_text())


def test_interrupt_writes_the_rows_measured_so_far(tiny_data, tmp_path, monkeypatch, capsys):
    code, report = _interrupted_run(tiny_data, tmp_path, monkeypatch, interrupt_at=4)
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert report["interrupted"] is True
    assert [(row["name"], row["best_workers"]) for row in report["rows"]] == [("naive", 2), ("pil", 1)]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("interrupt_at", [4, 2 + 2 + 4 + 2])  # in the sweep (pil's 2nd point), in the rounds
def test_a_ctrl_c_that_stops_a_worker_is_the_interrupt_not_a_failed_row(tiny_data, tmp_path, monkeypatch, capsys,
                                                                          interrupt_at):
    code, report = _interrupted_run(tiny_data, tmp_path, monkeypatch, interrupt_at, worker_dies=True)
    assert code == 130 and report["interrupted"] is True
    assert not any(row["failed"] for row in report["rows"]), [row["failed"] for row in report["rows"]]
    names = [row["name"] for row in report["rows"]]
    assert names == (["naive", "pil"] if interrupt_at == 4 else ["naive", "pil", "decode-only"])
    assert "failed" not in capsys.readouterr().err


def test_interrupt_in_the_paired_rounds_keeps_the_sweep_figures(tiny_data, tmp_path, monkeypatch):
    sweep_points = 2 + 2 + 4  # naive and pil at 1-2 workers; decode-only at 1-2 with processes and threads
    code, report = _interrupted_run(tiny_data, tmp_path, monkeypatch, interrupt_at=sweep_points + 2)
    assert code == 130
    assert report["interrupted"] is True and report["rounds"] == 0
    assert all(row["rounds_images_per_sec"] == [] for row in report["rows"])
    assert [row["images_per_sec"]["median"] for row in report["rows"]] == [200.0, 400.0, 800.0]
    assert any("paired rounds" in note for note in report["notes"])


# ---------------------------------------------------------------- a user's own data: bad files, failing rows


@pytest.fixture(scope="module")
def broken_data(tiny_data, tmp_path_factory):
    """A copy of the tiny data with one JPEG cut to a third of its bytes, and one image whose file
    name is no mask class (a listing problem); (root, the truncated file, the stray file)."""
    root = tmp_path_factory.mktemp("broken") / "tiny"
    shutil.copytree(tiny_data, root)
    truncated = sorted(root.rglob("*.jpg"))[0]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    stray = truncated.with_name("selfie.jpg")
    shutil.copy(sorted(root.rglob("*.jpg"))[1], stray)
    return root, truncated, stray


def test_every_row_survives_a_truncated_jpeg_and_counts_it(broken_data, tmp_path, capsys):
    root, truncated, stray = broken_data
    # Batch 3 divides the 21 listed images: every epoch reads every file, the truncated one too.
    code = compare_main(["--data", str(root), "--workers-max", "1", "--batches", "2", "--repeats", "1",
                         "--rounds", "1", "--size", "32", "--batch", "3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["naive", "pil", "albumentations", *(["dali"] if HAS_DALI else []), "literal", "decode-only"]
    for name, row in rows.items():
        assert row["failed"] is None and row["images_per_sec"]["median"] > 0, name
        assert row["skipped_files"] == 1, name  # the truncated file; the stray one is the listing's, not a row's
    assert [file["path"] for file in report["skipped"]] == [os.path.abspath(truncated)]
    assert [problem["path"] for problem in report["listing_problems"]] == [os.path.abspath(stray)]
    named = str(truncated.relative_to(root))
    assert sum(note.count(named) for note in report["notes"]) == 1  # named once, not once per row
    assert any("selfie.jpg" in note and note.startswith("listing:") for note in report["notes"])
    md = next(tmp_path.glob("*.md")).read_text()
    assert "skipped files |" in md and md.count(named) == 1
    assert all(line.endswith("| 1 |") for line in md.splitlines() if line.startswith(("| naive", "| pil")))


def test_a_failing_row_is_reported_and_the_others_are_kept(tiny_data, tmp_path, capsys):
    failing, unpaired = "tests.test_compare:make_failing_loader", "tests.test_compare:make_unpaired"
    code = compare_main(["--data", str(tiny_data), *TINY, "--workers-max", "1", "--out", str(tmp_path),
                         "--pipelines", "naive", "--loader", failing, "--loader", unpaired, "--loader", USER_LOADER])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{failing} failed: RuntimeError: decoder crashed on batch 2" in err and "Traceback" not in err
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["naive", failing, unpaired, USER_LOADER]  # the rows after the failures were measured
    assert rows[failing]["failed"] == "RuntimeError: decoder crashed on batch 2"
    assert rows[unpaired]["failed"].startswith("LoaderShapeError: ") and "expected (images, labels)" in err
    for name in (failing, unpaired):
        assert rows[name]["images_per_sec"] is None and rows[name]["ratio_to_naive"] is None
    for name in ("naive", USER_LOADER):
        assert rows[name]["failed"] is None and len(rows[name]["rounds_images_per_sec"]) == 2
    assert rows[USER_LOADER]["ratio_to_naive"] > 0
    md = next(tmp_path.glob("*.md")).read_text()
    assert f"| {failing} | — | **failed**: RuntimeError: decoder crashed on batch 2 |" in md
    assert len(list(tmp_path.glob("*.png"))) == 1  # the chart of the measured rows


def test_pipelines_take_commas_or_spaces():
    parser = make_parser()
    with_commas = config_from_args(parser.parse_args(["--pipelines", "naive,pil"]))
    with_spaces = config_from_args(parser.parse_args(["--pipelines", "naive", "pil"]))
    assert with_commas == with_spaces and with_commas.pipelines == ("naive", "pil")
    assert config_from_args(parser.parse_args([])).pipelines == compare.ROW_NAMES
