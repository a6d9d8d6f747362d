import json
import os
import random
import shutil

import pytest

from bench.tune import (
    Prediction, SearchLog, Setup, TuneConfig, dropped_pipelines, explain_bottleneck, forecast, grid_check,
    make_parser, rank,
)
from bench.tune.forecast import ConsumePoint, FeedPoint, consume_threads
from feeding.backends import capabilities
from training.models import model_threads


def prediction(pipeline, workers, feed, consume, predicted, size=224, batch=32):
    return Prediction(Setup(pipeline, workers, batch, (size, size)), feed, consume, predicted, None)


def test_worker_ladder():
    assert capabilities("pil").worker_ladder(8, on_cpu=True) == [0, 1, 2, 4, 8]
    assert capabilities("pil").worker_ladder(6, on_cpu=False) == [1, 2, 4, 6]


def _forecast(feed, consume, workers=4, batch=64, cores=16, on_cpu=False, threads=None):
    return forecast(feed, consume, Setup("pil", workers, batch, (224, 224)), cores, on_cpu, threads)


def test_on_a_gpu_the_slowest_of_input_host_and_model_binds():
    """Three stages: the loader, the training process's main thread, the device."""
    input_bound = _forecast(FeedPoint(500.0), ConsumePoint(800.0))
    assert (input_bound.predicted_ips, input_bound.bottleneck) == (500.0, "input")
    model_bound = _forecast(FeedPoint(900.0), ConsumePoint(800.0))
    assert (model_bound.predicted_ips, model_bound.bottleneck) == (800.0, "model")
    # 64 images a batch, 40 ms of the main thread's time per batch (receive and copy 30, launch 10):
    # the host stage takes 1600 img/s, below both the loader and a fast device.
    host_bound = _forecast(FeedPoint(3000.0, host_s_per_batch=0.03), ConsumePoint(5000.0, host_s_per_step=0.01))
    assert host_bound.bottleneck == "host" and host_bound.predicted_ips == pytest.approx(1600.0)
    assert dict(host_bound.stages)["host"] == pytest.approx(1600.0)


def test_the_hosts_cores_bound_the_loader_and_the_trainer_together():
    """2 cores; the loader takes 2 ms of CPU per image and the main thread 0.5 ms: whatever each stage
    alone could do, the cores give at most 2 / 2.5 ms = 800 img/s, charged to the loader."""
    prediction = _forecast(FeedPoint(950.0, host_s_per_batch=0.032, loader_cpu_s_per_image=0.002),
                           ConsumePoint(5000.0), cores=2)
    assert prediction.predicted_ips == pytest.approx(800.0) and prediction.bottleneck == "input"


def test_cpu_model_gets_the_cores_the_workers_leave():
    assert model_threads(2, 1) == 1 and model_threads(2, 4) == 1 and model_threads(16, 4) == 12
    # One worker and one model thread on two cores, each needing a core: each side runs at its own rate.
    alone = _forecast(FeedPoint(400.0, loader_cpu_s_per_image=1 / 400), ConsumePoint(20.0, cpu_s_per_image=1 / 20),
                      workers=1, batch=32, cores=2, on_cpu=True, threads=1)
    assert alone.predicted_ips == pytest.approx(20.0) and alone.bottleneck == "model"
    # The same model beside a loader that needs the cores too: 1/400 + 1/20 core-s per image on 2 cores.
    shared = _forecast(FeedPoint(400.0, loader_cpu_s_per_image=1 / 200), ConsumePoint(30.0, cpu_s_per_image=1 / 15),
                       workers=2, batch=32, cores=2, on_cpu=True, threads=1)
    assert shared.predicted_ips == pytest.approx(2 / (1 / 200 + 1 / 15))
    # No workers: loading and training take turns, so their times add.
    turns = _forecast(FeedPoint(100.0), ConsumePoint(100.0), workers=0, batch=32, cores=2, on_cpu=True, threads=2)
    assert turns.predicted_ips == pytest.approx(50.0) and turns.model_threads == 2


def test_verdicts_say_what_bounds_and_cite_only_what_was_measured():
    starved = prediction("pil", 4, 620, 1000, 620)
    bound, text = explain_bottleneck(starved, [starved])
    assert bound == "input" and "waits 38%" in text and "620 of the 1000 img/s" in text
    assert "DALI" not in text and "more workers" not in text  # nothing else was measured: no advice
    fed_smaller = prediction("pil", 4, 1300, 1200, 1200, size=160)
    bound, text = explain_bottleneck(starved, [starved, fed_smaller])
    assert "at 160x160 the feed keeps up: predicted 1200 img/s" in text

    spare = prediction("pil", 4, 2100, 1000, 1000)
    bound, text = explain_bottleneck(spare, [spare])
    assert bound == "model" and "2.1x feed headroom" in text
    assert "larger batch" not in text and "bigger model" not in text  # no other batch or model was tried
    smaller = prediction("pil", 4, 2600, 1400, 1400, size=192)
    bigger_batch = prediction("pil", 4, 2100, 1100, 1100, batch=128)
    other_pipeline = prediction("albumentations", 4, 3000, 1400, 1400, size=192)
    _, text = explain_bottleneck(spare, [spare, smaller, bigger_batch, other_pipeline])
    assert "at 192x192 the feed also keeps up: predicted 1400 img/s" in text
    assert "batch 128 measured: the feed also keeps up, predicted 1100 img/s" in text
    assert "albumentations" not in text and text.count("predicted") == 2


def test_rank_prefers_the_largest_shape_the_feed_keeps_up_with():
    def p(size, feed, consume):
        return Prediction(Setup("pil", 1, 32, (size, size)), feed, consume, min(feed, consume), None)

    ranked = rank([p(128, 300, 200), p(224, 300, 100), p(160, 100, 150)])
    assert ranked[0].setup.size == (224, 224)  # model-bound at the largest shape
    assert ranked[-1].bottleneck == "input"
    # No shape keeps the model fed: the shape of the best predicted rate.
    assert rank([p(224, 50, 100), p(160, 90, 150)])[0].setup.size == (160, 160)


def test_rank_picks_the_faster_setup_whatever_bounds_it():
    """A user's folder: 1 pil worker is model-bound at 137 img/s, albumentations with no workers is
    'input' (loading and training take turns) but predicts 154 img/s: the faster one is the pick."""
    pil = prediction("pil", 1, 140, 137, 137)
    albumentations = prediction("albumentations", 0, 1500, 171, 154)
    assert (pil.bottleneck, albumentations.bottleneck) == ("model", "input")
    assert rank([pil, albumentations])[0] == albumentations
    assert rank([albumentations, pil])[0] == albumentations


def test_rank_breaks_ties_toward_the_faster_feed_then_fewer_workers():
    slow_feed = prediction("pil", 1, 300, 1000, 300.0)
    fast_feed = prediction("albumentations", 4, 600, 298.5, 298.5)  # 0.5% slower: a tie, with twice the feed
    assert rank([slow_feed, fast_feed])[0] == fast_feed
    many = prediction("pil", 8, 600, 299.0, 299.0)
    few = prediction("pil", 2, 601, 298.0, 298.0)  # same feed within 1%: fewer workers win
    assert rank([many, few])[0] == few
    clear_winner = prediction("pil", 8, 400, 310.0, 310.0)  # 3% faster: no tie
    assert rank([few, many, clear_winner])[0] == clear_winner


def test_rank_does_not_depend_on_the_input_order():
    table = [prediction(pipeline, workers, feed, 200.0, min(feed, 200.0), size=size)
             for pipeline in ("pil", "albumentations") for workers in (0, 1, 2, 4)
             for size, feed in ((224, 150.0 + 10 * workers), (160, 199.0 + workers))]
    expected = rank(table)
    shuffler = random.Random(0)
    for _ in range(20):
        shuffled = table[:]
        shuffler.shuffle(shuffled)
        assert rank(shuffled) == expected
    # 160x160 keeps the model fed; there every worker count ties (199-200 img/s), 2 and 4 have the fastest
    # feeds (201, 203: within 1%): the fewer workers of those, and of two identical pipelines the first by name.
    assert expected[0].setup == Setup("albumentations", 2, 32, (160, 160))


def test_each_pipeline_that_lost_says_why():
    pick = prediction("albumentations", 0, 1500, 171, 154)
    ranked = [pick, prediction("pil", 1, 140, 137, 137), prediction("pil", 1, 300, 400, 300, size=128)]
    log = SearchLog(climbs={"albumentations": (4, 1363.0), "pil": (2, 900.0), "dali": (2, 331.0)},
                    unavailable={"ray": "ray is not installed (pip install ray)"})
    reasons = {d["pipeline"]: d["reason"] for d in dropped_pipelines(("pil", "albumentations", "dali", "ray"),
                                                                    ranked, log)}
    assert reasons == {
        "pil": "ranked lower: best predicted 137.0 img/s with 1 worker at 224x224 against the pick's 154.0",
        "dali": "pruned during the climb: best feed 331 img/s with 2 threads, below 60% of the leader's 1363 "
                "(albumentations, 4 workers)",
        "ray": "not measured: ray is not installed (pip install ray)",
    }


def test_the_exhaustive_check_can_disagree_with_the_tuner():
    """The grid's best is the highest predicted rate at the rule's shape, not rank()'s first: a pick
    within the 1% tie, or a worker count the climb skipped, shows up as a difference."""
    best_rate = prediction("pil", 3, 500, 400, 400.0)
    tie_pick = prediction("pil", 2, 900, 398.0, 398.0)  # ranked first: within 1%, with the faster feed
    grid = [best_rate, tie_pick, prediction("pil", 1, 300, 400, 300.0), prediction("pil", 1, 900, 600, 600, size=128)]
    assert rank(grid)[0] == tie_pick
    check = grid_check(tie_pick, 10.0, grid, 40.0)
    assert check["agree"] is False and check["ratio"] == pytest.approx(398 / 400)
    assert check["grid_best"]["workers"] == 3 and check["grid_best"]["predicted_ips"] == 400.0
    assert check["tuner_pick"]["workers"] == 2 and check["tuner_pick"]["rated_by"] == "the grid's measurement"
    assert check["time_ratio"] == pytest.approx(0.25) and "224x224" in check["grid_best"]["criterion"]
    assert grid_check(best_rate, 10.0, grid, 40.0)["agree"] is True


@pytest.mark.parametrize("kwargs,message", [
    ({"budget_s": 5}, "too small to measure"),
    ({"pipelines": ("pil", "tf")}, "unknown pipeline"),
    ({"device": "tpu"}, "--device"),
    ({"sizes": ()}, "at least one size"),
])
def test_bad_tune_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**kwargs)


def test_ranks_share_the_hosts_cores(monkeypatch):
    """torchrun --nproc-per-node N: each rank's workers and model threads come out of cores / N."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    one, four = TuneConfig(), TuneConfig(ranks=4, workers_max=32)
    assert (one.cores, one.workers_max) == (16, 32)
    assert (four.cores, four.workers_max) == (4, 8)
    # On the CPU, a rank with 2 workers leaves its model 2 of its 4 cores, not 14 of 16.
    assert consume_threads(2, four.cores, "cpu") == 2 and consume_threads(2, four.cores, "sim:100") == 1
    with pytest.raises(ValueError, match="more than this host"):
        TuneConfig(ranks=17)
    with pytest.raises(ValueError, match="--ranks"):
        TuneConfig(ranks=0)


def tiny_net(num_classes: int = 18):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


TINY = ["--model", "tests.test_tune:tiny_net", "--device", "cpu", "--sizes", "48,32", "--workers-max", "2",
        "--batches", "4", "--e2e-batches", "3", "--e2e-min-s", "0.5", "--pipelines", "pil,albumentations"]


@pytest.fixture
def sample_with_a_bad_row(sample_dir, tmp_path):
    """The sample, with a train.csv row whose gender is a typo (line 8)."""
    data = shutil.copytree(sample_dir, tmp_path / "sample")
    with open(data / "train" / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("000099,mal,Asian,30,000099_mal_Asian_30\n")
    return data


def test_tune_writes_a_recommendation_that_fit_can_read(sample_with_a_bad_row, tmp_path, capsys):
    from bench.tune import tune_main

    out = tmp_path / "results"
    assert tune_main([*TINY, "--data", str(sample_with_a_bad_row), "--budget-s", "120", "--out", str(out)]) == 0
    record = json.loads((out / "recommendation.json").read_text())
    for key in ("pipeline", "workers", "batch", "size", "feed_ips", "consume_ips", "predicted_ips", "measured_ips",
                "data_wait_fraction", "bottleneck", "machine", "commit", "created"):
        assert key in record, key
    assert record["pipeline"] in ("pil", "albumentations") and record["batch"] == 4
    assert record["predicted_ips"] == pytest.approx(min(record["feed_ips"], record["consume_ips"]), rel=0.6)
    assert record["measured_ips"] > 0  # (the wait fraction is held to its regime in test_verdict)
    if record["bottleneck_stage"] == "input":  # the loader's slowest stage is named where the loader binds
        assert record["loader_bottleneck_stage"] in ("read", "decode", "augment", "collate/IPC")
    else:
        assert record["loader_bottleneck_stage"] == "(not the bottleneck)"
    assert record["dataset"]["images"] == 42
    assert [row["size"] for row in record["shape_profile"]["rows"]] == [[48, 48], [32, 32]]
    tag = next(out.glob("tune-*.md")).stem
    report = (out / f"{tag}.md").read_text()
    assert (out / f"{tag}.png").stat().st_size > 0 and "## Recommendation" in report
    # The row the feeders left out is reported, in the JSON, the Markdown and on stdout.
    assert [s["path"].rsplit("/", 1)[-1] for s in record["skipped"]] == ["train.csv:8"]
    assert "gender" in record["skipped"][0]["reason"] and "train.csv:8" in report
    stdout = capsys.readouterr().out
    assert "skipped: 1 file(s) or listing row(s) left out (--on-bad skip)" in stdout and "train.csv:8: gender" in stdout
    # The pipeline that lost says why, and the next command trains with the pick.
    (lost,) = record["search"]["dropped"]
    assert {lost["pipeline"], record["pipeline"]} == {"pil", "albumentations"}
    assert lost["reason"].startswith(("ranked lower: best predicted", "pruned during the climb: best feed"))
    assert f"not picked: {lost['pipeline']}: {lost['reason']}" in stdout and lost["reason"] in report
    next_step = f"python -m training.fit --pipeline best --recommendation {out / 'recommendation.json'}"
    assert stdout.rstrip().endswith(f"next: {next_step}") and next_step in report
    assert "larger batch" not in record["verdict"]  # one batch was measured: no advice about others


def test_on_bad_fail_stops_at_the_bad_row(sample_with_a_bad_row, tmp_path, capsys):
    from bench.tune import tune_main

    code = tune_main([*TINY, "--data", str(sample_with_a_bad_row), "--on-bad", "fail", "--out", str(tmp_path)])
    assert code == 2 and "train.csv:8: gender must be 'male' or 'female'" in capsys.readouterr().err


def test_a_spent_budget_keeps_what_was_measured(sample_dir, tmp_path, monkeypatch):
    from bench import tune as tune_module

    calls = {"n": 0}
    real = tune_module.Measurer.check_budget

    def stop_after_seven(self):
        calls["n"] += 1
        if calls["n"] > 7:
            raise tune_module.BudgetExceeded("the budget is spent (test)")
        real(self)

    monkeypatch.setattr(tune_module.Measurer, "check_budget", stop_after_seven)
    out = tmp_path / "results"
    assert tune_module.tune_main([*TINY, "--data", str(sample_dir), "--out", str(out)]) == 0
    record = json.loads((out / "recommendation.json").read_text())
    assert record["search"]["interrupted"] == "the budget is spent (test)"
    assert len(record["search"]["measurements"]) == 7


@pytest.mark.parametrize("args,message", [
    (["--budget-s", "3"], "too small to measure"),
    (["--model", "resnet181"], "resnet18"),
    (["--device", "tpu"], "--device"),
    (["--sizes", "0"], "size must be N or HxW"),
    (["--workers-max", "0"], "--workers-max: expected a number >= 1, got 0"),
    (["--e2e-batches", "0"], "--e2e-batches: expected a number >= 1"),
    (["--ranks", "two"], "--ranks: expected a whole number, got 'two'"),
    (["--batches", "32,x"], "--batches: expected a whole number, got 'x'"),
    (["--on-bad", "ignore"], "--on-bad: invalid choice"),
])
def test_tune_bad_input_is_a_message_and_exit_2(args, message, sample_dir, tmp_path, capsys):
    from bench.tune import tune_main

    try:  # argparse's own errors exit; the rest are returned
        code = tune_main(["--data", str(sample_dir), "--out", str(tmp_path), "--pipelines", "pil", *args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_list_options_take_commas_or_spaces_and_every_option_says_what_it_does():
    parser = make_parser()
    commas = parser.parse_args(["--pipelines", "pil,albumentations", "--sizes", "224,256x192", "--batches", "32,64"])
    spaces = parser.parse_args(["--pipelines", "pil", "albumentations", "--sizes", "224", "256x192",
                                "--batches", "32", "64"])
    assert vars(commas) == vars(spaces)
    assert commas.sizes == ((224, 224), (256, 192)) and commas.batches == (32, 64)
    assert parser.parse_args([]).sizes == ((224, 224), (192, 192), (160, 160), (128, 128)) == TuneConfig().sizes
    assert all(action.help for action in parser._actions)
    assert "(default: skip)" in " ".join(parser.format_help().split())


# ---------------------------------------------------------------- whole runs on made-up rates (fast)


@pytest.fixture
def made_up_rates(monkeypatch):
    """Replace every measurement by a table: feed img/s by (pipeline, workers), the model 300 img/s,
    16 cores; the end-to-end check and stage timers report fixed values."""
    from bench.tune import measure as tune_measure

    feeds = {}
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(tune_measure, "feed_point", lambda samples, config, batches, device, threads, channels_last: (
        FeedPoint(feeds[config.pipeline, config.workers]), ()))
    monkeypatch.setattr(tune_measure, "consume_point", lambda config: ConsumePoint(300.0))
    end_to_end = {"measured_ips": 250.0, "data_wait_fraction": 0.1, "batches": 3, "seconds": 0.9, "epochs": 2,
                  "model_threads": 1, "decode_device": "cpu", "notes": [], "step": {}}
    monkeypatch.setattr(tune_measure, "check_end_to_end", lambda config, samples, best: (end_to_end, []))
    monkeypatch.setattr(tune_measure, "loader_stage", lambda config, samples, best: "decode")
    return feeds


# pil peaks at 3 workers, which the climb's ladder (0, 1, 2, 4, 6) steps over: 4 pays too little, so it stops there
PIL_FEEDS = {0: 50.0, 1: 100.0, 2: 200.0, 3: 400.0, 4: 205.0, 5: 100.0, 6: 100.0}
MADE_UP = ["--model", "tests.test_tune:tiny_net", "--sizes", "48,32", "--workers-max", "6", "--batches", "4",
           "--pipelines", "pil,albumentations"]


def test_a_pipeline_pruned_in_the_climb_is_reported(made_up_rates, sample_dir, tmp_path, capsys):
    from bench.tune import tune_main

    made_up_rates.update({("pil", w): ips for w, ips in PIL_FEEDS.items()})
    made_up_rates.update({("albumentations", w): 20.0 + w for w in PIL_FEEDS})
    out = tmp_path / "results"
    assert tune_main([*MADE_UP, "--data", str(sample_dir), "--out", str(out)]) == 0
    record = json.loads((out / "recommendation.json").read_text())
    assert (record["pipeline"], record["workers"]) == ("pil", 4)  # the best feed the climb measured
    reason = ("pruned during the climb: best feed 22 img/s with 2 workers, below 60% of the leader's 205 "
              "(pil, 4 workers)")
    assert record["search"]["dropped"] == [{"pipeline": "albumentations", "reason": reason}]
    assert f"not picked: albumentations: {reason}" in capsys.readouterr().out


def test_exhaustive_reports_the_tuners_pick_and_the_grids_best(made_up_rates, sample_dir, tmp_path, capsys):
    from bench.tune import tune_main

    made_up_rates.update({("pil", w): ips for w, ips in PIL_FEEDS.items()})
    out = tmp_path / "results"
    args = [*MADE_UP[:-1], "pil", "--exhaustive", "--data", str(sample_dir), "--out", str(out)]
    assert tune_main(args) == 0
    record = json.loads(next(out.glob("tune-*-exhaustive.json")).read_text())
    check = record["exhaustive_check"]
    # The grid finds 3 workers (model-bound at 300 img/s), the climb 4 (input-bound at 205: it stepped over 3).
    assert (check["grid_best"]["workers"], check["grid_best"]["predicted_ips"]) == (3, 300.0)
    assert (check["tuner_pick"]["workers"], check["tuner_pick"]["predicted_ips"]) == (4, 205.0)
    assert check["agree"] is False and check["ratio"] == pytest.approx(205 / 300)
    assert record["workers"] == 3  # the headline is the grid's, and the check says so
    assert "grid ranked by the tuner's rule" in check["headline"]
    report = next(out.glob("tune-*-exhaustive.md")).read_text()
    stdout = capsys.readouterr().out
    for text in (report, stdout):
        assert "tuner_pick (the climb search" in text and "grid_best (" in text
        assert "they differ: the tuner's pick reaches 68.3% of the grid's best" in text
    assert not (out / "recommendation.json").exists() and "--exhaustive writes no recommendation.json" in stdout
