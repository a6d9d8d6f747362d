"""How many Ray CPU nodes lift the feed above what the model consumes (for ``feedbench tune``).

Pure arithmetic on measured rates, kept apart from Ray: ``tune`` measures what
one node's Ray pipeline delivers (img/s) and what the model consumes (img/s),
and this says how many such nodes feed it. It assumes the feed scales linearly
with nodes (Ray Data actors share nothing but the storage); ``headroom`` keeps a
margin for what that ignores (storage, network, stragglers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from feeding.backends.ray_cluster import address_from_env, cluster_reachable

DEFAULT_HEADROOM = 1.1  # feed 10% above consumption: a feed that only just keeps up stalls on every hiccup


@dataclass(frozen=True)
class NodesVerdict:
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


def verdict(feed_per_node: float, consume: float, headroom: float = DEFAULT_HEADROOM) -> NodesVerdict:
    return NodesVerdict(nodes_needed(feed_per_node, consume, headroom), feed_per_node, consume, headroom)


def ray_candidate(pipelines: tuple[str, ...], environ: dict[str, str] | None = None,
                  timeout_s: float = 2.0) -> tuple[str, ...]:
    """``pipelines`` without "ray" unless RAY_ADDRESS names a cluster that answers (what tune measures)."""
    if "ray" not in pipelines or cluster_reachable(address_from_env(environ), timeout_s):
        return pipelines
    return tuple(p for p in pipelines if p != "ray")
