"""Error types and the record of a file that was skipped."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BadFile:
    """A file that was not delivered, and why (shown to the user, written to JSON)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class FeedError(RuntimeError):
    """A problem with the data or the feeder settings, stated so a user can act on it."""


class BadImageError(FeedError):
    """One image could not be read; the message names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # keep path and reason when raised inside a worker process
        return (type(self), (self.path, self.reason))

    def record(self) -> BadFile:
        return BadFile(self.path, self.reason)


class MissingDependencyError(ImportError):
    """An optional backend is not installed; the message says what to install."""
