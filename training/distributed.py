"""Data-parallel training under torchrun: one process per GPU (or per CPU slot, with gloo).

    torchrun --standalone --nproc-per-node 4 -m training.fit --pipeline dali ...
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:29500 --nproc-per-node 8 -m training.fit ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. Each rank reads its own shard:
host pipelines through DistributedSampler (``set_epoch`` every epoch), DALI's
reader with ``shard_id = RANK`` (the *global* rank: NVIDIA's examples use the
local rank, which on several nodes makes every node read the same shards and
leaves the rest unread) and ``device_id = LOCAL_RANK``. Metrics are reduced
across ranks; only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, replace

import torch

from feeding import checks

# A collective that does not complete in this time raises instead of hanging forever
# (a rank that died, or one that took a different number of steps).
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """A distributed setting that cannot work, stated so the user can fix the launch."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (one process: rank 0 of 1).

    Checked when built: a launch that cannot work is a ``DistributedError`` naming the variable.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        try:  # a launch error, not a programming one: DistributedError, as from the rest of the launch
            checks.count("WORLD_SIZE", self.world_size)
            checks.count("RANK", self.rank, minimum=0)
            checks.count("LOCAL_RANK", self.local_rank, minimum=0)
        except ValueError as error:
            raise DistributedError(str(error)) from None
        if self.rank >= self.world_size:
            raise DistributedError(f"RANK {self.rank} is outside WORLD_SIZE {self.world_size}: "
                                   "were the processes launched with different --nproc-per-node/--nnodes?")
        if self.local_rank > self.rank:
            raise DistributedError(f"LOCAL_RANK {self.local_rank} does not fit RANK {self.rank}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(environ: dict[str, str] | None = None) -> DistContext:
    """The torchrun variables, validated; no variables means a single process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return DistContext()
    try:
        return DistContext(rank=int(env.get("RANK", "0")), world_size=int(env["WORLD_SIZE"]),
                           local_rank=int(env.get("LOCAL_RANK", "0")))
    except ValueError as error:
        raise DistributedError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers: {error}") from None


def setup(ctx: DistContext, device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); return this rank's device."""
    wanted = torch.device(device)
    if wanted.type == "cuda":
        if torch.cuda.device_count() <= ctx.local_rank:
            raise DistributedError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA "
                                   "device(s): launch at most that many processes per node")
        if ctx.enabled:
            wanted = torch.device("cuda", ctx.local_rank)
        elif wanted.index is None:  # "cuda": the current device, with its index (set_device needs one)
            wanted = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(wanted)
    if ctx.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if wanted.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size,
                                             timeout=datetime.timedelta(seconds=timeout_s))
        if torch.distributed.get_world_size() != ctx.world_size:
            raise DistributedError(f"the process group has {torch.distributed.get_world_size()} ranks, "
                                   f"WORLD_SIZE says {ctx.world_size}")
    return wanted


def shard_feed(feed, ctx: DistContext, device: torch.device):
    """This rank's FeedConfig: its shard of the data, and a GPU decoder (DALI's) on this rank's GPU."""
    if not ctx.enabled:
        return feed
    rank_gpu = "cpu"
    if device.type == "cuda":
        rank_gpu = f"cuda:{device.index if device.index is not None else ctx.local_rank}"
    return replace(feed, shard_id=ctx.rank, num_shards=ctx.world_size,
                   decode_device=feed.capabilities.decode_device(rank_gpu))


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several ranks."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (for state dicts and evaluation, which must not run DDP's collectives)."""
    return getattr(model, "module", model)


def reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (a no-op with one process)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def reduce_max(value: float, ctx: DistContext, device: torch.device) -> float:
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def reduce_epoch_stats(stats, ctx: DistContext, device: torch.device):
    """One epoch's ``EpochStats`` for the whole job: images and loss summed over ranks, the slowest
    rank's seconds (the job goes at its pace) and the mean data wait."""
    if not ctx.enabled:
        return stats
    loss_sum, images, wait = reduce_sum([stats.loss * stats.images, float(stats.images), stats.data_wait_s],
                                        ctx, device)
    seconds = reduce_max(stats.seconds, ctx, device)
    return replace(stats, loss=loss_sum / images, images=int(images), seconds=seconds,
                   data_wait_s=wait / ctx.world_size)


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's decision (stop early, say) on every rank, so that all take the same number of steps."""
    if not ctx.enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(tensor, src=0)
    return bool(tensor.item())


def any_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank where any rank's ``flag`` is (a SIGTERM that reached some ranks only)."""
    return flag if not ctx.enabled else reduce_max(float(flag), ctx, device) > 0


def gather_objects(value, ctx: DistContext) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank: ``[value]`` without DDP."""
    if not ctx.enabled:
        return [value]
    gathered = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        torch.distributed.barrier()


def teardown(ctx: DistContext) -> None:
    """Leave the process group. Delete the DDP model first: destroying the group under a live DDP
    reducer aborts intermittently."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
