"""Device probe: feed-only vs end-to-end (resnet18 bf16 on CUDA) per executor and worker count."""
import sys, time, torch
from bench.consume import ConsumeConfig, prepare_model, train_step
from feeding.device import synchronizer
from training.models import build_model
from bench.measure import measure_feeder
from feeding import FeedConfig, create_feeder, discover
from feeding.device import DeviceFeeder
from feeding.sample import ensure_sample
from feeding.spec import train_spec

samples = discover(ensure_sample(people=int(sys.argv[1])))
print("images", len(samples), flush=True)
size = (128, 128)
consume = ConsumeConfig(model="resnet18", device="cuda", batch_size=64, size=size, num_classes=18).resolved()
model, optimizer = prepare_model(build_model("resnet18", 18), consume)
sync = synchronizer(torch.device("cuda"))
for workers in (4, 8, 14):
    for executor in ("thread", "process"):
        feed = FeedConfig(pipeline="albumentations", batch_size=64, workers=workers, executor=executor,
                          spec=train_spec(size))
        with create_feeder(samples, feed) as feeder:
            fed = measure_feeder(feeder, 20, 3, 4).images_per_sec.median
        with create_feeder(samples, feed) as feeder:
            dev = DeviceFeeder(feeder, "cuda", channels_last=True)
            n, wait, t_start = 0, 0.0, None
            while n < 64 * 60:
                clock = time.perf_counter()
                for images, labels in dev:
                    got = time.perf_counter()
                    if t_start is None:
                        t_start = got
                    else:
                        wait += got - clock
                        n += len(labels)
                    train_step(model, optimizer, images, labels, True)
                    clock = time.perf_counter()
                    if n >= 64 * 60:
                        break
            sync()
            total = time.perf_counter() - t_start
        print(f"workers {workers:2d} {executor:7s} feed {fed:7.0f}  end-to-end {n / total:7.0f} img/s  wait {wait / total:.0%}",
              flush=True)
