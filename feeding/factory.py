"""create_feeder: one entry point, whatever the backend."""
from __future__ import annotations

from feeding.feeder import FeedConfig, Feeder
from feeding.sources import Samples


def create_feeder(samples: Samples, config: FeedConfig) -> Feeder:
    """Build the Feeder that ``config.pipeline`` names. Backends import lazily."""
    if config.pipeline == "pil":
        from feeding.backends.host import HostFeeder
        from feeding.backends.pil import PilTransform

        return HostFeeder(samples, config, PilTransform(config.plan, config.max_pixels))
    if config.pipeline == "albumentations":
        from feeding.backends.albu import AlbumentationsTransform
        from feeding.backends.host import HostFeeder

        return HostFeeder(samples, config, AlbumentationsTransform(config.plan, config.max_pixels))
    if config.pipeline == "dali":
        from feeding.backends.dali import DaliFeeder

        return DaliFeeder(samples, config)
    if config.pipeline == "ray":  # without the feedbench[ray] extra: MissingDependencyError, with the hint
        from feeding.backends.ray import RayFeeder

        return RayFeeder(samples, config)
    raise ValueError(f"unknown pipeline {config.pipeline!r}")  # FeedConfig validates; kept for safety
