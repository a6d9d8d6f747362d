"""The consume side: config checks, model building, timed training steps, the largest-batch search."""
from __future__ import annotations

import pytest
import torch

from bench import capacity
from bench.capacity import largest_batch
from bench.consume import ConsumeConfig, measure_consumption
from training.models import build_model, model_threads


def tiny_net(num_classes: int = 10) -> torch.nn.Module:
    """A few-thousand-parameter CNN, built by ``"tests.test_consume:tiny_net"``."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, num_classes),
    )


def fixed_net() -> torch.nn.Module:
    """A factory that takes no ``num_classes``: called without it."""
    return tiny_net(num_classes=3)


TINY = "tests.test_consume:tiny_net"


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"device": "tpu"}, "'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cuda:x"}, "'cpu', 'cuda' or 'cuda:N'"),
        ({"batch_size": 0}, "batch_size"),
        ({"steps": 0}, "steps"),
        ({"warmup": -1}, "warmup"),
        ({"threads": 0}, "threads"),
        ({"size": (224,)}, "size"),
        ({"size": (0, 224)}, "size"),
        ({"model": ""}, "empty"),
        ({"model": "   "}, "empty"),
        ({"amp": "yes"}, "amp"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        ConsumeConfig(**fields)


def test_cuda_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*use device='cpu'"):
        ConsumeConfig(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        ConsumeConfig(device="cuda:1")


def test_resolved_defaults_follow_the_device():
    cpu = ConsumeConfig().resolved()
    assert (cpu.channels_last, cpu.amp) == (False, False)
    assert ConsumeConfig(amp=True).resolved().amp is True


# --- models ------------------------------------------------------------------------------------


def test_unknown_timm_model_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet181'; close matches: .*resnet18\b"):
        build_model("resnet181", num_classes=4)


def test_factory_form_passes_num_classes():
    model = build_model(TINY, num_classes=7)
    assert model[-1].out_features == 7
    assert build_model("tests.test_consume:fixed_net", num_classes=7)[-1].out_features == 3


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:factory", "cannot import module"),
        ("hf-hub:timm/resnet18.a1_in1k", "cannot import module"),  # hub names never download
        ("tests.test_consume:missing", "no callable 'missing'"),
        ("tests.test_consume:TINY", "no callable"),
    ],
)
def test_factory_form_errors(name, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, num_classes=4)


# --- throughput --------------------------------------------------------------------------------


def test_measure_consumption_trains_and_times_on_cpu():
    config = ConsumeConfig(model="resnet18", batch_size=4, size=(64, 64), warmup=1, steps=3, threads=1)
    model = build_model(config.model, config.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    threads_before = torch.get_num_threads()

    measured = measure_consumption(config, model=model)

    assert measured.images_per_sec.n == measured.step_ms.n == 3
    assert measured.images_per_sec.median > 0
    # odd number of steps: the medians are the same step, so the two agree up to rounding
    assert measured.images_per_sec.median == pytest.approx(4 / measured.step_ms.median * 1000, rel=1e-6)
    assert measured.threads == 1 and torch.get_num_threads() == threads_before
    assert (measured.amp, measured.channels_last, measured.device) == (False, False, "cpu")
    assert measured.peak_memory_bytes is None or measured.peak_memory_bytes >= 0
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert measured.to_dict()["images_per_sec"]["n"] == 3


def test_measure_consumption_factory_with_bf16_and_channels_last_on_cpu():
    config = ConsumeConfig(model=TINY, batch_size=4, size=(32, 32), warmup=0, steps=2,
                           amp=True, channels_last=True)
    measured = measure_consumption(config)
    assert measured.images_per_sec.median > 0
    assert (measured.amp, measured.channels_last, measured.model) == (True, True, TINY)


# --- largest batch -----------------------------------------------------------------------------


def _oom_above(threshold: int, error: BaseException):
    """A stand-in for one training step that runs out of memory above ``threshold`` images."""
    calls = []

    def step(train_step, config, batch_size):
        calls.append(batch_size)
        if batch_size > threshold:
            raise error
        return batch_size * 1000  # peak bytes: far below any budget

    return step, calls


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1234 bytes"),
        MemoryError(),
    ],
    ids=["cuda-oom", "cpu-allocator", "memory-error"],
)
def test_largest_batch_recovers_from_oom_and_keeps_a_margin(monkeypatch, error):
    step, calls = _oom_above(48, error)
    monkeypatch.setattr(capacity, "probe_step", step)
    config = ConsumeConfig(model=TINY, size=(32, 32))

    fit = largest_batch(config, start=16, limit=4096, margin=0.9, predict=False)
    batch, log = fit.batch, fit.probes

    assert batch == int(48 * 0.9) == 43 and fit.largest == 48 and fit.margin_applied
    assert "48 fitted, 64 did not (out of memory" in fit.sentence
    assert [entry["batch"] for entry in log] == calls == [16, 32, 64, 48, 56, 52, 50, 49]
    failed = [entry for entry in log if not entry["fits"]]
    assert [entry["batch"] for entry in failed] == [64, 56, 52, 50, 49]
    assert all(entry["reason"].startswith("out of memory") for entry in failed)


def test_largest_batch_reraises_errors_that_are_not_oom(monkeypatch):
    def step(train_step, config, batch_size):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(capacity, "probe_step", step)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        largest_batch(ConsumeConfig(model=TINY), predict=False)


def test_largest_batch_respects_the_ram_budget_and_reserve(monkeypatch):
    # 1 MiB per image; budget 200 MiB less a 100 MiB reserve leaves room for 100 images
    monkeypatch.setattr(capacity, "probe_step", lambda train_step, config, batch_size: batch_size * 2**20)
    config = ConsumeConfig(model=TINY)

    budget = {"margin": 1.0, "ram_budget_bytes": 200 * 2**20, "reserve_bytes": 100 * 2**20}

    ran_fit, predicted_fit = largest_batch(config, predict=False, **budget), largest_batch(config, **budget)
    (ran, ran_log), (predicted, predicted_log) = (ran_fit.batch, ran_fit.probes), (predicted_fit.batch,
                                                                                 predicted_fit.probes)

    assert ran == predicted == 100
    assert ran_log[3]["batch"] == 128 and "(not run)" in ran_log[3]["reason"]  # predicted over budget
    # two steps run (16, 32), the rest is predicted from the second
    was_predicted = [entry["reason"].startswith("predicted") for entry in predicted_log]
    assert was_predicted == [False, False] + [True] * (len(predicted_log) - 2)


def test_largest_batch_at_the_limit_and_when_nothing_fits(monkeypatch):
    monkeypatch.setattr(capacity, "probe_step", lambda train_step, config, batch_size: 0)
    at_limit = largest_batch(ConsumeConfig(model=TINY), start=16, limit=100, margin=0.5)
    assert (at_limit.batch, at_limit.margin_applied) == (100, False)  # nothing failed: no margin
    assert "no margin needed" in at_limit.sentence

    step, _ = _oom_above(0, MemoryError())
    monkeypatch.setattr(capacity, "probe_step", step)
    with pytest.raises(RuntimeError, match="not even a batch of 1 fits"):
        largest_batch(ConsumeConfig(model=TINY), start=4)


def test_largest_batch_runs_real_steps_on_cpu():
    fit = largest_batch(ConsumeConfig(model=TINY, size=(32, 32)), start=8, limit=64, margin=0.9,
                        ram_budget_bytes=2**30, predict=False)
    assert fit.batch == 64  # every probe fitted: a batch of 64 that fits is not cut to 57
    assert [e["batch"] for e in fit.probes] == [8, 16, 32, 64] and all(e["fits"] for e in fit.probes)


@pytest.mark.parametrize(
    "kwargs", [{"start": 0}, {"start": 64, "limit": 32}, {"margin": 0}, {"margin": 1.5}, {"reserve_bytes": -1}]
)
def test_largest_batch_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        largest_batch(ConsumeConfig(model=TINY), **kwargs)


# --- CPU sharing -------------------------------------------------------------------------------


def test_model_threads_gets_the_cores_the_workers_leave():
    assert model_threads(16, 8) == 8
    assert model_threads(2, 2) == 1
    assert model_threads(2, 0) == 2
    assert model_threads(4, 10) == 1
    with pytest.raises(ValueError):
        model_threads(0, 1)
    with pytest.raises(ValueError):
        model_threads(4, -1)


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_path_uses_bf16_channels_last_and_reports_memory():
    config = ConsumeConfig(model="resnet18", device="cuda", batch_size=8, size=(64, 64), warmup=1, steps=3)
    measured = measure_consumption(config)
    assert (measured.amp, measured.channels_last) == (True, True)
    assert measured.images_per_sec.median > 0
    assert measured.peak_memory_bytes > 0

    fit = largest_batch(ConsumeConfig(model=TINY, device="cuda", size=(32, 32)), start=8, limit=64)
    assert fit.batch == 64 and not fit.margin_applied and all(e["fits"] for e in fit.probes)


# --- the one step ------------------------------------------------------------------------------


def test_the_step_measured_is_the_step_fit_runs():
    """Optimizer, autocast, memory format and read-back come from one StepConfig: the measurement
    says which it ran, and the host's share of a step is measured apart from its wall time."""
    from training.step import StepConfig

    step = StepConfig(optimizer="sgd", loss_every=2)
    measured = measure_consumption(ConsumeConfig(model=TINY, batch_size=4, size=(32, 32), warmup=1, steps=4,
                                                 step=step))
    assert measured.optimizer == "sgd" and measured.step == step.to_dict()
    assert measured.step_ms.n == 4 and measured.host_ms_per_step > 0 and measured.cpu_s_per_image > 0
    assert ConsumeConfig().resolved().step == StepConfig.for_device("cpu")


def test_a_simulated_device_consumes_at_its_rate_scaled_by_pixels():
    """sim:R trains R img/s at 224x224 and R/4 at 448x448; the host pays only the launch."""
    fast = measure_consumption(ConsumeConfig(device="sim:2000", batch_size=32, size=(224, 224), warmup=1, steps=6))
    large = measure_consumption(ConsumeConfig(device="sim:2000", batch_size=32, size=(448, 448), warmup=1, steps=3))
    assert fast.images_per_sec.median == pytest.approx(2000, rel=0.1)
    assert large.images_per_sec.median == pytest.approx(500, rel=0.1)
    assert fast.host_ms_per_step < 0.25 * fast.step_ms.median  # the device's wait holds no core


@pytest.mark.parametrize("device", ["sim:0", "sim:abc", "sim:-5", "sim:"])
def test_a_bad_simulated_device_is_one_line(device):
    with pytest.raises(ValueError, match="sim:R|R must be|R > 0"):
        ConsumeConfig(device=device)
