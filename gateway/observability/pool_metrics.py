"""Replica pool series: requests, errors, in flight, health, ejections, affinity hits and spills.

``PoolMetrics`` is an upstream pool's ``PoolObserver`` (``adapters.upstream.observer``), one
per pooled backend, built by the CLI. Labels stay bounded: ``backend`` is the configured
backend name (configuration, never client input), and ``replica`` is the replica's
``host:port`` from configuration or from the pool's DNS answers, at most ``MAX_REPLICA_LABELS``
distinct values per backend for the life of the process (later ones are ``other``), so a
churning DNS name cannot grow the series without bound.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

from gateway.observability.labels import OTHER

__all__ = ("MAX_REPLICA_LABELS", "PoolMetrics")

MAX_REPLICA_LABELS = 64
"""Distinct ``replica`` values per backend; the pool itself holds at most 64 replicas."""

_LABELS = ("backend", "replica")

POOL_REQUESTS = Counter(
    "vlm_gateway_pool_requests",
    "Requests sent to a pool replica (a request retried on another replica counts on both).",
    _LABELS,
)
POOL_ERRORS = Counter(
    "vlm_gateway_pool_errors",
    "Requests a pool replica could not serve (unreachable, 5xx, overloaded, timed out, broken "
    "stream).",
    _LABELS,
)
POOL_IN_FLIGHT = Gauge(
    "vlm_gateway_pool_in_flight", "Requests a pool replica is serving now.", _LABELS
)
POOL_HEALTHY = Gauge(
    "vlm_gateway_pool_replica_healthy",
    "1 while a pool replica takes requests, 0 while it is ejected.",
    _LABELS,
)
POOL_EJECTIONS = Counter(
    "vlm_gateway_pool_ejections",
    "Times a pool replica was ejected after consecutive failures (or failed its start check).",
    _LABELS,
)
POOL_AFFINITY_HITS = Counter(
    "vlm_gateway_pool_affinity_hits",
    "Affinity routing: requests served by the replica that owns their key (its caches).",
    _LABELS,
)
POOL_AFFINITY_SPILLS = Counter(
    "vlm_gateway_pool_affinity_spills",
    "Affinity routing: requests passed from the replica owning their key to another, because "
    "it was ejected or at its load bound.",
    _LABELS,
)


class PoolMetrics:
    """One pooled backend's ``PoolObserver``: pool events become the pool series."""

    def __init__(self, backend: str) -> None:
        # Used as is, not through labels.bounded: the pool reports its replicas when it is
        # built, before the app configures the label vocabularies.
        self.backend = backend[:128]
        self._replicas: set[str] = set()

    def _labels(self, replica: str) -> tuple[str, str]:
        return self.backend, self._replica(replica)

    def _replica(self, replica: str) -> str:
        if replica in self._replicas:
            return replica
        if len(self._replicas) >= MAX_REPLICA_LABELS or not replica:
            return OTHER
        self._replicas.add(replica)
        return replica

    def started(self, replica: str) -> None:
        labels = self._labels(replica)
        POOL_REQUESTS.labels(*labels).inc()
        POOL_IN_FLIGHT.labels(*labels).inc()

    def finished(self, replica: str, failed: bool) -> None:
        labels = self._labels(replica)
        POOL_IN_FLIGHT.labels(*labels).dec()
        if failed:
            POOL_ERRORS.labels(*labels).inc()

    def routed(self, replica: str, hit: bool) -> None:
        (POOL_AFFINITY_HITS if hit else POOL_AFFINITY_SPILLS).labels(*self._labels(replica)).inc()

    def health(self, replica: str, healthy: bool, ejected: bool) -> None:
        labels = self._labels(replica)
        POOL_HEALTHY.labels(*labels).set(1 if healthy else 0)
        if ejected:
            POOL_EJECTIONS.labels(*labels).inc()

    def removed(self, replica: str) -> None:
        labels = self._labels(replica)
        if labels[1] != OTHER:  # "other" stands for several replicas: some may remain
            with contextlib.suppress(KeyError):
                POOL_HEALTHY.remove(*labels)
