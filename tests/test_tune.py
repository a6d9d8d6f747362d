import pytest

from bench.tune import (
    Candidate, Prediction, TuneConfig, model_threads, predict, rank, verdict, worker_ladder,
)


def test_worker_ladder():
    assert worker_ladder(8, on_cpu=True) == [0, 1, 2, 4, 8]
    assert worker_ladder(6, on_cpu=False) == [1, 2, 4, 6]


def test_prediction_on_a_gpu_is_min_of_feed_and_consume():
    assert predict(500.0, {0: 800.0}, 4, 16, on_cpu=False) == (500.0, 800.0, None)
    assert predict(900.0, {0: 800.0}, 4, 16, on_cpu=False)[0] == 800.0


def test_cpu_model_gets_the_cores_the_workers_leave():
    assert model_threads(2, 1) == 1 and model_threads(2, 4) == 1 and model_threads(16, 4) == 12
    # One worker and one model thread on two cores: each side runs at its own rate.
    assert predict(400.0, {1: 20.0}, 1, 2, on_cpu=True) == (20.0, 20.0, 1)
    # Four workers on two cores beside a model thread: the loader keeps only one core's worth.
    predicted, _, threads = predict(400.0, {1: 1000.0}, 4, 2, on_cpu=True)
    assert threads == 1 and predicted == pytest.approx(200.0)
    # No workers: loading and training take turns, so their times add.
    predicted, consume, threads = predict(100.0, {2: 100.0}, 0, 2, on_cpu=True)
    assert (predicted, consume, threads) == (pytest.approx(50.0), 100.0, 2)


def test_verdicts_say_what_bounds_and_what_would_change_it():
    bound, text = verdict(feed_ips=620, consume_ips=1000, predicted_ips=620, on_cpu=False)
    assert bound == "input" and "waits 38%" in text and "DALI" in text
    bound, text = verdict(feed_ips=2100, consume_ips=1000, predicted_ips=1000, on_cpu=False)
    assert bound == "model" and "2.1x" in text


def test_rank_prefers_the_largest_shape_the_feed_keeps_up_with():
    def p(size, feed, consume):
        return Prediction(Candidate("pil", 1, 32, (size, size)), feed, consume, min(feed, consume), None)

    ranked = rank([p(128, 300, 200), p(224, 300, 100), p(160, 100, 150)])
    assert ranked[0].candidate.size == (224, 224)  # model-bound at the largest shape
    assert ranked[-1].bottleneck == "input"


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
    monkeypatch.setattr("bench.tune.os.cpu_count", lambda: 16)
    one, four = TuneConfig(), TuneConfig(ranks=4, workers_max=32)
    assert (one.cores, one.workers_max) == (16, 32)
    assert (four.cores, four.workers_max) == (4, 8)
    # On the CPU, a rank with 2 workers leaves its model 2 of its 4 cores, not 14 of 16.
    _, _, threads = predict(400.0, {2: 10.0}, workers=2, cores=four.cores, on_cpu=True)
    assert threads == 2
    with pytest.raises(ValueError, match="more than this host"):
        TuneConfig(ranks=17)
    with pytest.raises(ValueError, match="--ranks"):
        TuneConfig(ranks=0)


def tiny_net(num_classes: int = 18):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


TINY = ["--model", "tests.test_tune:tiny_net", "--device", "cpu", "--sizes", "48,32", "--workers-max", "2",
        "--batches", "4", "--e2e-batches", "3", "--e2e-min-s", "0.5", "--pipelines", "pil,albumentations"]


def test_tune_writes_a_recommendation_that_fit_can_read(sample_dir, tmp_path):
    import json

    from bench.tune import tune_main

    out = tmp_path / "results"
    assert tune_main([*TINY, "--data", str(sample_dir), "--budget-s", "120", "--out", str(out)]) == 0
    record = json.loads((out / "recommendation.json").read_text())
    for key in ("pipeline", "workers", "batch", "size", "feed_ips", "consume_ips", "predicted_ips", "measured_ips",
                "data_wait_fraction", "bottleneck", "machine", "commit", "created"):
        assert key in record, key
    assert record["pipeline"] in ("pil", "albumentations") and record["batch"] == 4
    assert record["predicted_ips"] == pytest.approx(min(record["feed_ips"], record["consume_ips"]), rel=0.6)
    assert 0 <= record["data_wait_fraction"] <= 1 and record["measured_ips"] > 0
    assert record["loader_bottleneck_stage"] in ("read", "decode", "augment", "collate/IPC")
    assert record["dataset"]["images"] == 42
    assert [row["size"] for row in record["shape_profile"]["rows"]] == [[48, 48], [32, 32]]
    tag = next(out.glob("tune-*.md")).stem
    assert (out / f"{tag}.png").stat().st_size > 0 and "## Recommendation" in (out / f"{tag}.md").read_text()


def test_a_spent_budget_keeps_what_was_measured(sample_dir, tmp_path, monkeypatch):
    import json

    from bench import tune as tune_module

    calls = {"n": 0}
    real = tune_module.Measurer._check_budget

    def stop_after_ten(self):
        calls["n"] += 1
        if calls["n"] > 10:
            raise tune_module.BudgetExceeded("the budget is spent (test)")
        real(self)

    monkeypatch.setattr(tune_module.Measurer, "_check_budget", stop_after_ten)
    out = tmp_path / "results"
    assert tune_module.tune_main([*TINY, "--data", str(sample_dir), "--out", str(out)]) == 0
    record = json.loads((out / "recommendation.json").read_text())
    assert record["search"]["interrupted"] == "the budget is spent (test)"
    assert len(record["search"]["measurements"]) == 10


@pytest.mark.parametrize("args,message", [
    (["--budget-s", "3"], "too small to measure"),
    (["--model", "resnet181"], "resnet18"),
    (["--device", "tpu"], "--device"),
    (["--sizes", "0"], "size"),
])
def test_tune_bad_input_is_a_message_and_exit_2(args, message, sample_dir, tmp_path, capsys):
    from bench.tune import tune_main

    code = tune_main(["--data", str(sample_dir), "--out", str(tmp_path), "--pipelines", "pil", *args])
    assert code == 2 and message in capsys.readouterr().err
