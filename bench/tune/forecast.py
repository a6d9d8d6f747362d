"""The throughput forecast: what one setup would train at, from what was measured, and why.

Training is a pipeline of three stages, and the slowest one sets the rate:

- ``input``: the loader's workers, measured as the trainer sees them (batches through the
  device step into a consumer that does nothing: ``bench.measure.measure_feed_to_device``);
- ``host``: the training process's main thread, which receives each batch, copies it towards
  the device and launches the step (its CPU time per batch, measured on both sides);
- ``model``: the device's time per step (a GPU, the simulated accelerator), or on the CPU the
  model's own compute.

Where workers and the training process share the host's cores (always on the CPU; on a GPU
host when the workers ask for every core), a fourth bound holds: the cores can give no more
CPU seconds per second than there are cores, so the rate is at most cores / (CPU seconds per
image of the loader + of the training process). It is charged to whichever side takes more.
``explain_bottleneck`` says in words what bounds a pick, citing only alternatives measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from feeding.backends import capabilities
from feeding.checks import Shape
from training.models import training_threads

WAIT_TOLERANCE = 0.05  # a model that waits less than 5% of the time is not held back by its input


@dataclass(frozen=True)
class Setup:
    """One setting the tuner measures: a pipeline with its workers, a batch, an image shape (pixels)."""

    pipeline: str
    workers: int
    batch: int
    size: Shape

    def same_loader(self, other: Setup) -> bool:
        """The same pipeline with as many workers (the batch and shape may differ)."""
        return (self.pipeline, self.workers) == (other.pipeline, other.workers)


STAGES = ("input", "host", "model")


@dataclass(frozen=True)
class FeedPoint:
    """A loader setup's feed to the device: img/s into a consumer that does nothing, the main
    thread's CPU seconds per batch (receive, copy, normalize), the workers' CPU seconds per image."""

    ips: float
    host_s_per_batch: float = 0.0
    loader_cpu_s_per_image: float = 0.0


@dataclass(frozen=True)
class ConsumePoint:
    """The model side: img/s of the training step on batches already on the device, the main
    thread's CPU seconds per step, and the process's CPU seconds per image (all its threads)."""

    ips: float
    host_s_per_step: float = 0.0
    cpu_s_per_image: float = 0.0


@dataclass(frozen=True)
class Prediction:
    """A setup's measured feed and consumption and the training rate forecast from them (img/s).

    ``stages``: (name, img/s) of each bound that was computed; ``bottleneck`` the one that binds.
    ``measured_ips``: the end-to-end rate, where the setup was checked with the real loop.
    """

    setup: Setup
    feed_ips: float  # what the loader delivers to the device alone, img/s
    consume_ips: float  # what the model consumes with the threads left to it, img/s
    predicted_ips: float
    model_threads: int | None
    bottleneck: str = ""
    stages: tuple[tuple[str, float], ...] = ()
    measured_ips: float | None = None

    def __post_init__(self) -> None:
        if not self.bottleneck:  # a prediction made from two rates only: min(feed, consume)
            wait = wait_fraction(self.predicted_ips, self.consume_ips)
            object.__setattr__(self, "bottleneck", "input" if wait > WAIT_TOLERANCE else "model")

    @property
    def rate(self) -> float:
        """What a pick is judged by: the measured rate where there is one, else the predicted."""
        return self.predicted_ips if self.measured_ips is None else self.measured_ips

    def row(self) -> dict:
        """The prediction as a record's row (the JSON field names that fit and results/ read)."""
        return {**asdict(self.setup), "feed_ips": self.feed_ips, "consume_ips": self.consume_ips,
                "predicted_ips": self.predicted_ips, "model_threads": self.model_threads,
                "bottleneck": self.bottleneck, "stages": dict(self.stages), "measured_ips": self.measured_ips}

    @classmethod
    def from_row(cls, row: dict) -> Prediction:
        """The prediction a record's row (``row()``) was made from."""
        setup = Setup(row["pipeline"], row["workers"], row["batch"], tuple(row["size"]))
        return cls(setup, row["feed_ips"], row["consume_ips"], row["predicted_ips"], row["model_threads"],
                   row.get("bottleneck", ""), tuple(row.get("stages", {}).items()), row.get("measured_ips"))


def consume_threads(workers: int, cores: int, device: str) -> int:
    """The torch threads the training process runs with beside ``workers`` loader workers
    (``training.models.training_threads``)."""
    return training_threads(device, cores, workers)


def forecast(feed: FeedPoint, consume: ConsumePoint, setup: Setup, cores: int, on_cpu: bool,
             threads: int | None = None) -> Prediction:
    """The setup's predicted rate (img/s), the stage that binds it, and every bound (pure).

    On a GPU or the simulated accelerator the device runs apart from the host: the rate is the
    slowest of the loader (``feed.ips``), the training process's main thread (receiving the batch
    and launching the step) and the device (``consume.ips``), and at most what the host's cores
    give the loader and the main thread together. On the CPU the main thread computes the step
    itself, beside the workers: the loader, the main thread (receive, then the step), and the
    cores' budget for both. With no workers the training process loads and trains in turn.
    """
    batch = setup.batch
    host_s = feed.host_s_per_batch + consume.host_s_per_step
    if on_cpu and setup.workers == 0:
        rate = 1.0 / (1.0 / feed.ips + 1.0 / consume.ips)
        stages = (("input", feed.ips), ("model", consume.ips))
        bound = "input" if feed.ips < consume.ips else "model"
        return Prediction(setup, feed.ips, consume.ips, rate, threads, bound, stages)
    if on_cpu:
        main_s = feed.host_s_per_batch + batch / consume.ips  # receive, then the step on this thread
        main_stage = "model" if batch / consume.ips >= feed.host_s_per_batch else "host"
        stages = {"input": feed.ips, main_stage: batch / main_s}
        cpu_per_image = feed.loader_cpu_s_per_image + consume.cpu_s_per_image + feed.host_s_per_batch / batch
        loader_share = feed.loader_cpu_s_per_image
        trainer_share = cpu_per_image - loader_share
    else:
        stages = {"input": feed.ips, "host": batch / host_s if host_s > 0 else float("inf"), "model": consume.ips}
        cpu_per_image = feed.loader_cpu_s_per_image + host_s / batch
        loader_share, trainer_share = feed.loader_cpu_s_per_image, host_s / batch
    bound = min(stages, key=stages.get)
    rate = stages[bound]
    if cpu_per_image > 0 and cores / cpu_per_image < rate:  # the cores are shared and run out first
        rate = cores / cpu_per_image
        bound = "input" if loader_share >= trainer_share else ("model" if on_cpu else "host")
    stages["cores"] = cores / cpu_per_image if cpu_per_image > 0 else float("inf")
    return Prediction(setup, feed.ips, consume.ips, rate, threads, bound,
                      tuple((name, ips) for name, ips in stages.items() if ips != float("inf")))


def wait_fraction(predicted_ips: float, consume_ips: float) -> float:
    """The share of time the model would wait for data (pure)."""
    return max(0.0, 1 - predicted_ips / consume_ips)


def area(size: Shape) -> int:
    """Pixels per image at ``size``."""
    return size[0] * size[1]


def by_area(size: Shape) -> tuple:
    """Order shapes by area, and two of the same area (256x192, 192x256) always the same way."""
    return area(size), size


def workers_phrase(pipeline: str, workers: int) -> str:
    """'2 workers', '1 thread': in the unit of the pipeline's workers."""
    unit = capabilities(pipeline).worker_unit
    return f"{workers} {unit}{'' if workers == 1 else 's'}"


def explain_bottleneck(pick: Prediction, measured: list[Prediction]) -> tuple[str, str]:
    """(bottleneck, sentence) for the pick (pure): what bounds it, and the measured alternatives that
    bear on it (``measured``: every prediction made; the pick's own setup at other shapes and batches).

    Only measured alternatives are cited: advice to try a batch or a shape that was
    never measured would be a guess.
    """
    stages = dict(pick.stages)
    bound = pick.bottleneck
    cited = "; ".join(_alternative(p, pick) for p in _alternatives(pick, measured))
    others = ", ".join(f"{name} {ips:.0f}" for name, ips in stages.items() if name != bound)
    if bound == "input":
        cause = ("with no workers, loading and training take turns" if pick.setup.workers == 0
                 else f"the loader delivers {pick.predicted_ips:.0f} of the {pick.consume_ips:.0f} img/s "
                      "the model could take")
        wait = wait_fraction(pick.predicted_ips, pick.consume_ips)
        return "input", (f"input-bound: the model waits {100 * wait:.0f}% of the time ({cause})"
                         + (f"; {cited}" if cited else ""))
    if bound == "host":
        return "host", (f"host-bound: the training process's main thread (receiving each batch, copying it to "
                        f"the device, launching the step) takes {pick.predicted_ips:.0f} img/s; the other stages "
                        f"could go further ({others} img/s)" + (f"; {cited}" if cited else ""))
    headroom = pick.feed_ips / pick.consume_ips
    wait = wait_fraction(pick.predicted_ips, pick.consume_ips)
    why_waits = "loading takes turns with training" if pick.setup.workers == 0 else "the loader lags a little"
    still_waits = f" (the model still waits {100 * wait:.0f}% of the time: {why_waits})" if wait > 0.005 else ""
    if headroom <= 1.2:
        tail = "the feed is just keeping up: a faster model would make it input-bound"
    else:
        tail = cited or "no other shape or batch was measured with this setup"
    return "model", f"model-bound: {headroom:.1f}x feed headroom{still_waits}; {tail}"


def _alternatives(pick: Prediction, measured: list[Prediction]) -> list[Prediction]:
    """The pick's pipeline and workers at its nearest larger and smaller shapes (the same batch
    where measured), then at its shape with every other measured batch (pure)."""
    c = pick.setup
    same_loader = {p.setup: p for p in measured if p.setup.same_loader(c) and p.setup != c}
    batches = [p for p in same_loader.values() if p.setup.size == c.size]
    by_size: dict[Shape, Prediction] = {}
    for p in sorted(same_loader.values(), key=lambda p: (p.setup.batch != c.batch, p.setup.batch)):
        if p.setup.size != c.size:
            by_size.setdefault(p.setup.size, p)
    larger = [s for s in by_size if area(s) > area(c.size)]
    smaller = [s for s in by_size if area(s) < area(c.size)]
    if pick.bottleneck == "input":  # the largest smaller shape that keeps up, else the smallest measured
        keeping_up = [s for s in smaller if by_size[s].bottleneck == "model"]
        nearest = [max(keeping_up, key=by_area)] if keeping_up else [min(smaller, key=by_area)] if smaller else []
    else:
        nearest = ([min(larger, key=by_area)] if larger else []) + ([max(smaller, key=by_area)] if smaller else [])
    return [by_size[s] for s in nearest] + sorted(batches, key=lambda p: p.setup.batch)


def _alternative(p: Prediction, pick: Prediction) -> str:
    """'at 192x192 the feed also keeps up: predicted 310 img/s' or 'batch 128 measured: ...'."""
    c, fed = p.setup, p.bottleneck == "model"
    if fed:
        state = "also keeps up" if pick.bottleneck == "model" else "keeps up"
    else:
        state = f"falls behind (the model waits {100 * wait_fraction(p.predicted_ips, p.consume_ips):.0f}%)"
    if c.size == pick.setup.size:
        return f"batch {c.batch} measured: the feed {state}, predicted {p.predicted_ips:.0f} img/s"
    batch = f", batch {c.batch}" if c.batch != pick.setup.batch else ""
    return f"at {c.size[0]}x{c.size[1]}{batch} the feed {state}: predicted {p.predicted_ips:.0f} img/s"
