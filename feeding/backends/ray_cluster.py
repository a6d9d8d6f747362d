"""Where the Ray pipeline runs and how its CPUs are shared; importable without Ray.

Kept apart from ``feeding.backends.ray`` (which imports Ray) so that the
``feedbench tune`` side can ask whether a cluster is reachable, and tests can
check the CPU arithmetic, on an install without the ``ray`` extra.

Why a CPU reservation: a Ray Data actor waits for a free CPU without a word. If
the trainer's workers hold every CPU of the cluster, the transform actors never
start and the first batch never comes (a silent hang). So the CPUs Ray Data may
use are computed up front (``data_cpu_limit``): the cluster's CPUs less those
reserved for others (the trainer's workers); the pipeline is refused with the
numbers when that leaves fewer than its actors need, and Ray Data is capped at
that figure (``ExecutionOptions.resource_limits``) so that it cannot take the
trainer's CPUs either.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from feeding import checks
from feeding.errors import FeedError

TRANSFORMS = ("albumentations", "pil")  # the host transforms a Ray actor can run
LOCAL_ADDRESSES = (None, "", "local")  # start a Ray of our own on this host
RAY_CLIENT_PREFIX = "ray://"
DEFAULT_GCS_PORT = 6379  # `ray start --head` listens here unless told otherwise
DEFAULT_CLIENT_PORT = 10001  # Ray Client's default (ray://HOST)


@dataclass(frozen=True)
class RayConfig:
    """Where Ray runs and what the Ray Data pipeline may use; validated when built.

    ``address``: None (or "local") starts Ray on this host with ``num_cpus``
    logical CPUs; "auto" joins the cluster this host belongs to; "HOST:PORT" or
    "ray://HOST:PORT" joins a remote one (checked to answer within
    ``connect_timeout_s`` first: ``ray.init`` retries an unreachable address for
    minutes). ``actors`` x ``cpus_per_actor`` CPUs decode and augment;
    ``reserved_cpus`` stay free for others (trainer workers).
    """

    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None: this host's cores
    actors: int = 1  # transform actors in the pool (a fixed-size ActorPoolStrategy)
    cpus_per_actor: float = 1.0
    reserved_cpus: float = 0.0
    transform: str = "albumentations"  # which host transform the actors run (TRANSFORMS)
    connect_timeout_s: float = 10.0
    object_store_mb: int = 1024  # local Ray only: shared memory for blocks in flight (MiB)

    def __post_init__(self) -> None:
        if self.address not in LOCAL_ADDRESSES and self.address != "auto":
            parse_address(self.address)  # a malformed address fails here, not inside ray.init
        checks.count("num_cpus", self.num_cpus, allow_none=True)
        checks.count("actors", self.actors)  # the pipeline needs at least one actor
        checks.number("reserved_cpus", self.reserved_cpus, minimum=0)
        for name in ("cpus_per_actor", "connect_timeout_s"):
            checks.positive(name, getattr(self, name))
        checks.choice("transform", self.transform, TRANSFORMS)
        checks.count("object_store_mb", self.object_store_mb, minimum=64)

    @property
    def is_local(self) -> bool:
        return self.address in LOCAL_ADDRESSES

    @property
    def data_cpus(self) -> float:
        """CPUs the actor pool holds while it runs."""
        return self.actors * self.cpus_per_actor

    @property
    def local_cpus(self) -> int:
        """Logical CPUs of a local Ray: the host's cores, or ``num_cpus``."""
        return self.num_cpus or os.cpu_count() or 1


def address_from_env(environ: dict[str, str] | None = None) -> str | None:
    """``RAY_ADDRESS`` (Ray's own variable, which ``ray.init`` would also read), or None."""
    environ = os.environ if environ is None else environ
    return environ.get("RAY_ADDRESS") or None


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT", "HOST", "ray://HOST:PORT" or "ray://HOST"; ValueError otherwise."""
    text, default_port = address.strip(), DEFAULT_GCS_PORT
    if text.startswith(RAY_CLIENT_PREFIX):
        text, default_port = text[len(RAY_CLIENT_PREFIX):], DEFAULT_CLIENT_PORT
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    host = host.strip("[]")  # [IPv6]:PORT
    if not host or (sep and not port.isdigit()):
        raise ValueError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")
    return host, int(port) if sep else default_port


def check_reachable(address: str, timeout_s: float) -> None:
    """Raise FeedError unless something accepts a TCP connection at ``address`` within ``timeout_s``.

    ``ray.init`` on an address where nothing listens retries for minutes before
    failing; a plain connect answers in at most ``timeout_s``.
    """
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
    raise FeedError(
        f"no Ray cluster answers at {address} ({host}:{port}: {reason} within {timeout_s:g} s); "
        "start one with `ray start --head`, fix RAY_ADDRESS, or leave it unset to run Ray on this host"
    )


def cluster_reachable(address: str | None, timeout_s: float = 2.0) -> bool:
    """True when ``address`` names a remote cluster that answers (for ``tune``: consider the ray pipeline)."""
    if address in LOCAL_ADDRESSES or address == "auto":
        return False  # "auto" needs ray itself to resolve; tune asks about explicit addresses
    try:
        check_reachable(address, timeout_s)
    except (FeedError, ValueError):
        return False
    return True


def data_cpu_limit(cluster_cpus: float, reserved_cpus: float, actors_need: float) -> float:
    """The CPUs Ray Data may use: the cluster's less the reserved ones; FeedError when the actors would starve."""
    available = cluster_cpus - reserved_cpus
    if available < actors_need:
        raise FeedError(
            f"the Ray cluster has {cluster_cpus:g} CPUs and {reserved_cpus:g} are reserved (trainer workers), "
            f"leaving {max(available, 0):g} for Ray Data, whose actors need {actors_need:g}: it would wait forever. "
            "Add CPU nodes, use fewer actors or trainer workers, or start a local Ray with more num_cpus"
        )
    return available
