"""The throughput forecast: what one setup would train at, from its measured feed and consumption, and why.

Predicted training rate is min(feed, consume) (img/s); on the CPU the loader's
workers and the model share the cores, so the model gets the threads the
workers leave free (``forecast``). ``explain_bottleneck`` says in words what
bounds a pick, citing only alternatives that were measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from feeding.backends import capabilities
from feeding.checks import Shape
from training.models import model_threads

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


@dataclass(frozen=True)
class Prediction:
    """A setup's measured feed and consumption and the training rate forecast from them (img/s)."""

    setup: Setup
    feed_ips: float  # what the loader delivers alone, img/s
    consume_ips: float  # what the model consumes with the threads left to it, img/s
    predicted_ips: float
    model_threads: int | None

    @property
    def bottleneck(self) -> str:
        """'input' when the loader holds the model back, else 'model'."""
        return "input" if wait_fraction(self.predicted_ips, self.consume_ips) > WAIT_TOLERANCE else "model"

    def row(self) -> dict:
        """The prediction as a record's row (the JSON field names that fit and results/ read)."""
        return {**asdict(self.setup), "feed_ips": self.feed_ips, "consume_ips": self.consume_ips,
                "predicted_ips": self.predicted_ips, "model_threads": self.model_threads,
                "bottleneck": self.bottleneck}

    @classmethod
    def from_row(cls, row: dict) -> Prediction:
        """The prediction a record's row (``row()``) was made from."""
        setup = Setup(row["pipeline"], row["workers"], row["batch"], tuple(row["size"]))
        return cls(setup, row["feed_ips"], row["consume_ips"], row["predicted_ips"], row["model_threads"])


def consume_threads(workers: int, cores: int, on_cpu: bool) -> int:
    """The torch threads the model trains with beside ``workers`` loader workers: on the CPU all
    ``cores`` with no workers (loading and training take turns), else the cores the workers leave;
    0 on a GPU, meaning torch's own setting."""
    if not on_cpu:
        return 0
    return cores if workers == 0 else model_threads(cores, workers)


def forecast(feed_ips: float, consume_by_threads: dict[int, float], workers: int, cores: int,
             on_cpu: bool) -> tuple[float, float, int | None]:
    """(predicted img/s, consume img/s used, model threads) for one setup (pure).

    ``consume_by_threads``: the model's img/s by torch threads (``consume_threads``).
    On a GPU: min(feed, consume). On the CPU with workers: the model takes the
    cores the workers leave; where workers and model together ask for more
    cores than there are, the feed keeps only its share. With no workers the
    training process loads and trains in turn: the times add up.
    """
    threads = consume_threads(workers, cores, on_cpu)
    consume = consume_by_threads[threads]
    if not on_cpu:
        return min(feed_ips, consume), consume, None
    if workers == 0:
        return 1.0 / (1.0 / feed_ips + 1.0 / consume), consume, threads
    loader_cores = min(workers, cores)
    feed_share = feed_ips * min(1.0, (cores - threads) / loader_cores) if cores > threads else feed_ips / (threads + 1)
    return min(feed_share, consume), consume, threads


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
    wait = wait_fraction(pick.predicted_ips, pick.consume_ips)
    cited = "; ".join(_alternative(p, pick) for p in _alternatives(pick, measured))
    if wait > WAIT_TOLERANCE:
        cause = ("with no workers, loading and training take turns" if pick.setup.workers == 0
                 else f"the loader delivers {pick.predicted_ips:.0f} of the {pick.consume_ips:.0f} img/s "
                      "the model could take")
        return "input", (f"input-bound: the model waits {100 * wait:.0f}% of the time ({cause})"
                         + (f"; {cited}" if cited else ""))
    headroom = pick.feed_ips / pick.consume_ips
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
