"""How many Ray CPU nodes lift the feed above what the model consumes (for ``feedbench tune``).

Arithmetic on measured rates, kept apart from Ray (only ``cluster_nodes`` imports
it): ``tune`` measures what the ray pipeline delivers on the cluster with N
actors (img/s) and what the model consumes (img/s); a CPU node of C CPUs runs C
one-CPU actors, so one node feeds ``feed * C / N``, and this says how many such
nodes feed the model. It assumes the feed scales linearly with actors and
nodes (Ray Data actors share nothing but the storage); ``headroom`` keeps a
margin for what that ignores (storage, network, stragglers).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from feeding.backends import capabilities
from feeding.backends.ray_cluster import address_from_env, cluster_reachable

DEFAULT_HEADROOM = 1.1  # feed 10% above consumption: a feed that only just keeps up stalls on every hiccup


@dataclass(frozen=True)
class NodeEstimate:
    """``nodes`` CPU nodes deliver ``feed_img_s`` (img/s) against ``consume_img_s``; validated when built."""

    nodes: int
    feed_per_node_img_s: float
    consume_img_s: float
    headroom: float

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")

    @property
    def feed_img_s(self) -> float:
        return self.nodes * self.feed_per_node_img_s

    def describe(self) -> str:
        return (f"{self.nodes} Ray CPU node(s) at {self.feed_per_node_img_s:.0f} img/s each feed "
                f"{self.feed_img_s:.0f} img/s against {self.consume_img_s:.0f} img/s consumed "
                f"({self.headroom:.0%} of consumption asked)")


def nodes_needed(feed_per_node: float, consume: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """The fewest nodes, each feeding ``feed_per_node`` img/s, whose sum is >= ``headroom * consume`` img/s."""
    if feed_per_node <= 0:
        raise ValueError(f"feed_per_node must be a positive rate (img/s), got {feed_per_node}")
    if consume < 0:
        raise ValueError(f"consume must be a rate >= 0 (img/s), got {consume}")
    if headroom < 1:
        raise ValueError(f"headroom must be >= 1 (a feed below consumption starves the model), got {headroom}")
    # A small tolerance: 3 nodes x 100 img/s for 300 img/s must not round up to 4.
    return max(1, math.ceil(headroom * consume / feed_per_node - 1e-9))


def estimate_nodes(feed_per_node: float, consume: float, headroom: float = DEFAULT_HEADROOM) -> NodeEstimate:
    """The fewest nodes that feed ``headroom`` x ``consume`` img/s, each feeding ``feed_per_node`` img/s."""
    return NodeEstimate(nodes_needed(feed_per_node, consume, headroom), feed_per_node, consume, headroom)


def ray_candidate(pipelines: tuple[str, ...], environ: dict[str, str] | None = None,
                  timeout_s: float = 2.0) -> tuple[str, ...]:
    """``pipelines`` without those that need a cluster (ray) unless RAY_ADDRESS names one that answers
    (what tune measures)."""
    local = tuple(name for name in pipelines if not capabilities(name).needs_cluster)
    if local == pipelines or cluster_reachable(address_from_env(environ), timeout_s):
        return pipelines
    return local


def cpu_node_size(nodes: list[dict]) -> float:
    """The CPUs of a typical CPU node, from ``ray.nodes()``: the median over the live nodes
    without GPUs (the ones that would be added to feed), or over all live nodes where every one has GPUs."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    with_cpus = [r for r in alive if r.get("CPU", 0) > 0]
    if not with_cpus:
        raise ValueError("the Ray cluster reports no live node with CPUs")
    cpu_only = [r for r in with_cpus if not r.get("GPU", 0)]
    return float(statistics.median(r["CPU"] for r in (cpu_only or with_cpus)))


def per_node_feed(feed_img_s: float, actors: int, node_cpus: float, cpus_per_actor: float = 1.0) -> float:
    """What one node of ``node_cpus`` CPUs feeds, from ``actors`` actors measured at ``feed_img_s``."""
    if actors < 1 or node_cpus <= 0 or cpus_per_actor <= 0:
        raise ValueError(f"need actors >= 1 and positive CPUs, got {actors}, {node_cpus}, {cpus_per_actor}")
    return feed_img_s / actors * (node_cpus / cpus_per_actor)


def scale_report(ray_feeds: dict[int, float], consume_img_s: float, node_cpus: float,
                 headroom: float = DEFAULT_HEADROOM) -> dict:
    """The node count for ``tune``'s report, from the ray feeds measured at one shape and batch
    (actors -> img/s). The measurement with the most actors is used: per-actor rates fall as
    actors are added, so it is the least optimistic about a node full of them."""
    if not ray_feeds:
        raise ValueError("no ray pipeline measurement to scale from")
    actors = max(ray_feeds)
    per_node = per_node_feed(ray_feeds[actors], actors, node_cpus)
    found = estimate_nodes(per_node, consume_img_s, headroom)
    return {"actors_measured": actors, "feed_img_s": ray_feeds[actors], "node_cpus": node_cpus,
            "feed_per_node_img_s": per_node, "consume_img_s": consume_img_s, "headroom": headroom,
            "nodes": found.nodes, "sentence": found.describe()}


def cluster_nodes(address: str | None) -> list[dict]:
    """``ray.nodes()`` of the cluster at ``address`` (joining it for the call where not joined yet)."""
    from feeding.backends.ray import connect, ray
    from feeding.backends.ray_cluster import RayConfig

    started = connect(RayConfig(address=address))
    try:
        return ray.nodes()
    finally:
        if started:
            ray.shutdown()
