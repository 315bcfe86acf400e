"""What a replica pool reports (metrics), without importing the gateway.

``PoolObserver`` is implemented by ``gateway.observability.pool_metrics.PoolMetrics`` and
passed in by the CLI; ``NoPoolObserver`` is the default. Every call names the replica by its
label (``host:port`` of its URL), which the observer bounds; all calls come from the event loop.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ("NoPoolObserver", "PoolObserver")


class PoolObserver(Protocol):
    """Told what the pool does with each replica."""

    def started(self, replica: str) -> None:
        """A request was sent to ``replica`` (a retry counts again, on its replica)."""
        ...

    def finished(self, replica: str, failed: bool) -> None:
        """That request ended; ``failed``: the replica could not serve it (unavailable)."""
        ...

    def routed(self, replica: str, hit: bool) -> None:
        """An affinity decision for a key owned by ``replica``: served there (a hit) or passed
        on because it was unhealthy or over its load bound (a spill)."""
        ...

    def health(self, replica: str, healthy: bool, ejected: bool) -> None:
        """``replica`` is (now) healthy or not; ``ejected``: it was just ejected."""
        ...

    def removed(self, replica: str) -> None:
        """``replica`` left the pool (a DNS answer no longer lists it)."""
        ...


class NoPoolObserver:
    def started(self, replica: str) -> None:
        pass

    def finished(self, replica: str, failed: bool) -> None:
        pass

    def routed(self, replica: str, hit: bool) -> None:
        pass

    def health(self, replica: str, healthy: bool, ejected: bool) -> None:
        pass

    def removed(self, replica: str) -> None:
        pass
