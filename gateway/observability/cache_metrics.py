"""The engine caches' series: hits, misses, evictions and sizes of the embedding and prefix caches.

``CacheMetrics`` is the local engine's ``CacheObserver`` (``adapters.local.cache``): the engine
reports cache events and sizes to it, and it records them here, with the cache name bounded like
every label (``gateway.observability.labels``). Called from the model's worker thread;
prometheus_client metrics are thread-safe.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gateway.observability.labels import CACHES, bounded

__all__ = ("CacheMetrics",)

# -- series ---------------------------------------------------------------------------------

CACHE_HITS = Counter("vlm_gateway_cache_hits", "Cache lookups that found a value.", ("cache",))
CACHE_MISSES = Counter("vlm_gateway_cache_misses", "Cache lookups that found nothing.", ("cache",))
CACHE_EVICTIONS = Counter(
    "vlm_gateway_cache_evictions", "Entries evicted to stay within the byte bound.", ("cache",)
)
CACHE_OVERSIZE = Counter(
    "vlm_gateway_cache_oversize",
    "Values not cached because one alone is larger than the cache's byte bound.",
    ("cache",),
)
CACHE_BYTES = Gauge("vlm_gateway_cache_bytes", "Bytes held by the cache now.", ("cache",))
CACHE_ENTRIES = Gauge("vlm_gateway_cache_entries", "Entries held by the cache now.", ("cache",))
CACHE_CAPACITY_BYTES = Gauge(
    "vlm_gateway_cache_capacity_bytes", "Configured byte bound of the cache.", ("cache",)
)


def _create_cache_series() -> None:
    # Series exist at zero from the start, so rate() and hit ratios work before the first hit.
    for cache in CACHES:
        for metric in (CACHE_HITS, CACHE_MISSES, CACHE_EVICTIONS, CACHE_BYTES, CACHE_ENTRIES):
            metric.labels(cache)


_create_cache_series()

_EVENTS = {
    "hit": CACHE_HITS,
    "miss": CACHE_MISSES,
    "evicted": CACHE_EVICTIONS,
    "expired": CACHE_EVICTIONS,
    "oversize": CACHE_OVERSIZE,
}
"""Each cache event's counter: an expiry is an eviction by time (one series for both)."""


class CacheMetrics:
    """The local engine's ``CacheObserver``: cache events and sizes become the cache series."""

    def counted(self, cache: str, event: str, n: int) -> None:
        counter = _EVENTS.get(event)
        if counter is not None:
            counter.labels(bounded("cache", cache)).inc(n)

    def usage(self, cache: str, *, bytes_used: int, entries: int, capacity_bytes: int) -> None:
        c = bounded("cache", cache)
        CACHE_BYTES.labels(c).set(bytes_used)
        CACHE_ENTRIES.labels(c).set(entries)
        CACHE_CAPACITY_BYTES.labels(c).set(capacity_bytes)
