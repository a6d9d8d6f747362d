"""Device probe: feed-only vs end-to-end (resnet18 bf16 on CUDA) per executor and worker count.

    .venv/bin/python scripts/executors_e2e.py PEOPLE

PEOPLE: people in the sample data set (7 images each). Prints one line per (workers, executor):
the feed's img/s alone, the img/s of training on its batches, and the share of that time spent
waiting for data.
"""
import sys
import time

import torch

from bench.consume import ConsumeConfig, training_step
from bench.measure import measure_feeder
from feeding import FeedConfig, create_feeder, discover
from feeding.device import DeviceFeeder, synchronizer
from feeding.sample import ensure_sample
from feeding.spec import train_spec
from training.models import build_model

SIZE = (128, 128)  # height, width in pixels
BATCH = 64
TRAINED_BATCHES = 60  # batches timed end to end, after the first


def feed_rate(samples, feed: FeedConfig) -> float:
    """The feed's median img/s alone: 3 windows of 20 batches after 4 warm-up batches."""
    with create_feeder(samples, feed) as feeder:
        return measure_feeder(feeder, 20, 3, 4).images_per_sec.median


def end_to_end(samples, feed: FeedConfig, step, sync) -> tuple[int, float, float]:
    """Train on the feed's batches (on CUDA, channels last); (images, seconds waited for data, seconds in all),
    timed from the first batch's arrival."""
    wanted = BATCH * TRAINED_BATCHES
    with create_feeder(samples, feed) as feeder:
        dev = DeviceFeeder(feeder, "cuda", channels_last=True)
        n, wait, t_start = 0, 0.0, None
        while n < wanted:
            clock = time.perf_counter()
            for images, labels in dev:
                got = time.perf_counter()
                if t_start is None:
                    t_start = got
                else:
                    wait += got - clock
                    n += len(labels)
                step.run(images, labels)
                step.update()
                clock = time.perf_counter()
                if n >= wanted:
                    break
        sync()
        return n, wait, time.perf_counter() - t_start


def main(people: int) -> None:
    samples = discover(ensure_sample(people=people))
    print("images", len(samples), flush=True)
    consume = ConsumeConfig(model="resnet18", device="cuda", batch_size=BATCH, size=SIZE, num_classes=18).resolved()
    step = training_step(consume, build_model("resnet18", 18))  # the step training.fit runs: bf16, channels_last
    sync = synchronizer(torch.device("cuda"))
    for workers in (4, 8, 14):
        for executor in ("thread", "process"):
            feed = FeedConfig(pipeline="albumentations", batch_size=BATCH, workers=workers, executor=executor,
                              spec=train_spec(SIZE))
            fed = feed_rate(samples, feed)
            n, wait, total = end_to_end(samples, feed, step, sync)
            print(f"workers {workers:2d} {executor:7s} feed {fed:7.0f}  end-to-end {n / total:7.0f} img/s  "
                  f"wait {wait / total:.0%}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
