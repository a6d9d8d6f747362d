"""Ray Train: decode and augmentation as a Ray Data pipeline, training in TorchTrainer workers.

    python -m training.ray_train --workers 2 --actors 2 --epochs 2 --size 64 --batch 16
    RAY_ADDRESS=HEAD:6379 python -m training.ray_train --workers 4 --gpu --actors 32 --model resnet50

For a cluster whose GPU nodes starve because their own cores cannot decode fast
enough: the Ray Data actors (the ray pipeline of ``feeding.backends.ray``, the
same transform code as the host pipelines) run wherever there are free CPUs, e.g.
CPU-only nodes, and stream batches to the trainer workers
(``ray.train.get_dataset_shard`` + ``iter_torch_batches``), which train with DDP
through ``training.engine.train_one_epoch``.

How the epochs work: the one dataset lists the batches of every epoch (each
epoch its own seeded shuffle and per-batch augmentation streams, as the host
pipelines), so Ray Data streams the whole run in one execution (its actors
start once, not every epoch) and Ray Train splits that stream between the
workers; each worker takes ``steps_per_epoch`` batches per epoch. Which worker
gets which batch is decided as they ask (``streaming_split``), so near an
epoch's end a worker may already hold a few images of the next epoch.

CPUs: every trainer worker holds ``cpus_per_worker`` CPUs, the Ray Data actors
``actors`` more; the run is refused up front when the cluster cannot hold both
(Ray Data would otherwise wait silently for CPUs the trainers keep), and Ray
Data is capped at the CPUs the trainers leave. A local Ray gets exactly the sum
as logical CPUs (more than the host's cores is fine: they are slots, not cores).

Validation: each worker evaluates its exact slice of the validation split with
the albumentations host pipeline, in its own process (the split is small, and a
second Ray Data pipeline would wait for actors the training pipeline holds);
the metrics are reduced over the workers. Ray Train stores one checkpoint per
epoch under ``OUT/ray_train/`` (the metrics; the weights in the last one only).
This entry point is for scaling out the feed; ``training.fit`` is the full trainer.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from feeding import checks
from feeding.checks import parse_size
from feeding.errors import FeedError, MissingDependencyError
from feeding.feeder import FeedConfig, batches_per_epoch
from feeding.spec import AugSpec, Normalize, Shape
from feeding.spec_file import SpecFile, train_and_eval

WEIGHTS_FILE = "model.pt"  # the last epoch's checkpoint: the unwrapped model's state_dict


@dataclass(frozen=True)
class RayTrainConfig:
    """One Ray Train run; ``batch`` is per worker and per step (the global batch is ``batch * workers``)."""

    data: str | None = None  # None: the embedded sample data set
    model: str = "resnet18"  # timm name or "package.module:factory" (training.models.build_model)
    epochs: int = 2
    batch: int = 32
    size: Shape = (224, 224)
    lr: float = 1e-3
    workers: int = 2  # TorchTrainer workers
    cpus_per_worker: float = 1.0
    use_gpu: bool = False  # one GPU per trainer worker
    actors: int = 2  # Ray Data transform actors (1 CPU each)
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray
    val_fraction: float = 0.2
    seed: int = 0
    out: str = "runs/ray_train"
    spec: SpecFile | None = None  # the --spec file (train section: the Ray Data feed; eval: validation); sets size

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "workers", "actors"):
            checks.count(name, getattr(self, name))
        if self.spec is not None and not isinstance(self.spec, SpecFile):
            raise TypeError(f"spec must be a SpecFile (feeding.spec_file.load_spec_file), got {self.spec!r}")
        size = self.spec.train.output_size if self.spec is not None else self.size
        object.__setattr__(self, "size", checks.size("size", size))
        for name in ("cpus_per_worker", "lr"):
            checks.positive(name, getattr(self, name))
        checks.positive("val_fraction", self.val_fraction, maximum=1, open_maximum=True)

    @property
    def trainer_cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def train_augmentation(self) -> AugSpec:
        return train_and_eval(self.spec, self.size)[0]

    @property
    def eval_augmentation(self) -> AugSpec:
        return train_and_eval(self.spec, self.size)[1]


def steps_per_epoch(images: int, batch: int, workers: int) -> int:
    """Steps each worker takes per epoch: the epoch's full batches shared equally; FeedError if a worker gets none."""
    batches = batches_per_epoch(images, batch, drop_last=True)
    if batches < workers:
        raise FeedError(
            f"{images} training images make {batches} batch(es) of {batch}: fewer than the {workers} workers, "
            "so some worker would have nothing to train on; use fewer workers or a smaller --batch"
        )
    return batches // workers


class ShardEpochs:
    """One epoch at a time out of a worker's stream of batches: what ``train_one_epoch`` takes as a feeder."""

    def __init__(self, batches: Iterator, steps: int) -> None:
        self.batches = batches
        self.steps = steps
        self.next_epoch = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        # The stream holds the epochs in order; another order is not in it.
        if epoch != self.next_epoch:
            raise ValueError(f"the Ray Train stream delivers epoch {self.next_epoch} next, not {epoch}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            images, labels, _skipped = next(self.batches)
            yield images, labels
        self.next_epoch += 1


def train_loop(loop: dict) -> None:
    """What each TorchTrainer worker runs."""
    import ray.train
    import ray.train.torch

    from training.models import build_model
    from feeding.backends.ray import torch_batches
    from feeding.device import DeviceFeeder
    from training.distributed import unwrap
    from training.engine import evaluate, train_one_epoch

    config: RayTrainConfig = loop["config"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)  # the same initial weights on every worker (DDP broadcasts rank 0's anyway)
    model = ray.train.torch.prepare_model(build_model(config.model, loop["num_classes"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    shard = ray.train.get_dataset_shard("train")
    stream = ShardEpochs(iter(torch_batches(shard, loop["feed"])), loop["steps_per_epoch"])
    # The stream has no feeder config to read the spec's Normalize from: hand it over.
    train_feed = DeviceFeeder(stream, device, loop["feed"].spec.normalize or Normalize())
    val_feed = _validation_feed(loop, rank, ray.train.get_context().get_world_size(), device)
    for epoch in range(config.epochs):
        stats = train_one_epoch(model, train_feed, optimizer, loss_fn, epoch)
        # Every rank evaluates its slice: torchmetrics reduces over the ranks in compute(), so a
        # rank-0-only evaluation would wait forever. The unwrapped model: DDP's forward may sync buffers.
        result = evaluate(unwrap(model), val_feed, loop["num_classes"])
        metrics = {"epoch": epoch, "loss": stats.loss, "images": stats.images,
                   "images_per_sec": stats.images_per_sec, "data_wait_fraction": stats.data_wait_fraction,
                   "macro_f1": result.macro_f1, "accuracy": result.accuracy}
        last = epoch == config.epochs - 1
        with tempfile.TemporaryDirectory() as folder:
            # Ray Train (v2) keeps metrics only with a checkpoint: rank 0 reports one each epoch,
            # with the weights in the last one only (the others would be dead weight in storage).
            checkpoint = _checkpoint(folder, unwrap(model) if last else None) if rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch{epoch:04d}")


def _checkpoint(folder: str, model: torch.nn.Module | None):
    import ray.train

    if model is not None:
        torch.save(model.state_dict(), os.path.join(folder, WEIGHTS_FILE))
    return ray.train.Checkpoint.from_directory(folder)


def _validation_feed(loop: dict, rank: int, world_size: int, device: torch.device):
    """This rank's exact slice of the validation split, through the albumentations host pipeline in-process."""
    from feeding import create_feeder
    from feeding.device import DeviceFeeder
    from feeding.feeder import shard_indices

    config: RayTrainConfig = loop["config"]
    val = loop["val"].subset(shard_indices(len(loop["val"]), rank, world_size))
    feed = FeedConfig(pipeline="albumentations", batch_size=config.batch, workers=0, spec=config.eval_augmentation,
                      shuffle=False, drop_last=False, seed=config.seed)
    return DeviceFeeder(create_feeder(val, feed), device)


def _import_ray_train():
    try:
        import ray.train
        import ray.train.torch
    except ImportError as error:
        raise MissingDependencyError(
            "training.ray_train needs Ray Train: pip install 'feedbench[ray]' (or pip install 'ray[data,train]')"
        ) from error
    return ray


def run(config: RayTrainConfig) -> dict:
    """Split the data, start (or join) Ray, train, and return rank 0's metrics per epoch."""
    from feeding.sample import resolve_data
    from feeding.backends.host import EpochBatchSampler
    from feeding.backends.ray_cluster import RayConfig, address_from_env, data_cpu_limit
    from feeding.sources import discover, person_split

    # on_bad="fail": this entry point has no report of skipped listing rows, so one is an error naming it.
    train, val = person_split(discover(resolve_data(config.data), on_bad="fail"), config.val_fraction, config.seed)
    steps = steps_per_epoch(len(train), config.batch, config.workers)  # before anything starts
    ray = _import_ray_train()
    from feeding.backends.ray import build_dataset, cluster_cpus, connect

    ray_config = RayConfig(address=config.address or address_from_env(), actors=config.actors,
                           reserved_cpus=config.trainer_cpus,
                           num_cpus=math.ceil(config.trainer_cpus + config.actors))
    feed = FeedConfig(pipeline="ray", batch_size=config.batch, workers=config.actors,
                      spec=config.train_augmentation, seed=config.seed)
    owns_ray = connect(ray_config)
    try:
        data_cpus = data_cpu_limit(cluster_cpus(), ray_config.reserved_cpus, ray_config.data_cpus)
        sampler = EpochBatchSampler(len(train), feed, epoch=0)
        keys = [key for epoch in range(config.epochs) for key in _epoch(sampler, epoch)]
        dataset = build_dataset(train, feed, ray_config, keys, data_cpus)
        result = _trainer(config, dataset, data_cpus, steps, feed, train, val).fit()
    finally:
        if owns_ray:
            ray.shutdown()
    history = _history(result)
    if len(history) != config.epochs:
        raise FeedError(f"Ray Train reported {len(history)} of {config.epochs} epochs: see the log above")
    from feeding.spec_file import spec_provenance

    spec_file = config.spec.name if config.spec is not None else None
    return {"config": {**asdict(config), "size": list(config.size),
                       "spec": config.spec.record() if config.spec is not None else None},
            **spec_provenance(config.train_augmentation, config.eval_augmentation, spec_file),
            "steps_per_epoch": steps,
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "train_images": len(train), "val_images": len(val), "data_cpus": data_cpus, "epochs": history}


def _epoch(sampler, epoch: int) -> list:
    sampler.epoch = epoch
    return list(sampler)


def _trainer(config: RayTrainConfig, dataset, data_cpus: float, steps: int, feed: FeedConfig, train, val):
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train applies its own ExecutionOptions to the datasets it splits (copied from the global
    # DataContext, not from the dataset): restate the order and the CPU cap here.
    ingest = ExecutionOptions(preserve_order=True, resource_limits=ExecutionResources.for_limits(cpu=data_cpus))
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config, "feed": feed, "steps_per_epoch": steps,
                           "num_classes": len(train.classes), "val": val},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest),
        run_config=RunConfig(name="ray_train", storage_path=str(Path(config.out).resolve())),
    )


def _history(result) -> list[dict]:
    """Rank 0's reports, one per epoch, in order (Ray Train keeps them with the checkpoints)."""
    reports = [dict(metrics) for _, metrics in (result.best_checkpoints or [])]
    return sorted(reports, key=lambda metrics: metrics["epoch"])


def get_args_parser() -> argparse.ArgumentParser:
    from feeding.options import HelpFormatter, add_spec_argument, plain_text

    d = RayTrainConfig()
    p = argparse.ArgumentParser(prog="python -m training.ray_train",
                                description=plain_text(__doc__.split("\n\n")[0]), formatter_class=HelpFormatter)
    p.add_argument("--data", help="data set directory or CSV manifest (without it: the embedded sample)")
    p.add_argument("--model", default=d.model, help="timm model name or package.module:factory")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs to train")
    p.add_argument("--batch", type=int, default=d.batch, help="images per worker and step")
    p.add_argument("--size", default="x".join(map(str, d.size)), help="N or HxW pixels")
    add_spec_argument(p)  # the Ray Data feed runs its train section, validation its eval section; it sets --size
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--workers", type=int, default=d.workers, help="TorchTrainer workers")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker,
                   help="CPUs reserved for each trainer worker (Ray Data gets the rest)")
    p.add_argument("--gpu", action="store_true", help="one GPU per trainer worker")
    p.add_argument("--actors", type=int, default=d.actors, help="Ray Data actors that decode and augment")
    p.add_argument("--address", help="Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default RAY_ADDRESS, "
                   "else a local Ray")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of people held out")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the feed and the model")
    p.add_argument("--out", default=d.out, help="run directory (Ray Train's storage, summary.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        from feeding.options import spec_from_args

        spec = spec_from_args(parser, argv, fixed=("size",))
        config = RayTrainConfig(data=args.data, model=args.model, epochs=args.epochs, batch=args.batch,
                                size=parse_size(args.size), lr=args.lr, workers=args.workers,
                                cpus_per_worker=args.cpus_per_worker, use_gpu=args.gpu, actors=args.actors,
                                address=args.address, val_fraction=args.val_fraction, seed=args.seed, out=args.out,
                                spec=spec)
        summary = run(config)
    except (FeedError, MissingDependencyError, ValueError) as error:
        print(f"ray_train: error: {error}", file=sys.stderr)
        return 2
    from feeding.io import write_json

    for epoch in summary["epochs"]:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in epoch.items()
                       if k in ("epoch", "loss", "images_per_sec", "data_wait_fraction", "macro_f1", "accuracy")))
    print(f"wrote {write_json(os.path.join(config.out, 'summary.json'), summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
