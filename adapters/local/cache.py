"""The local adapter's cache building blocks: settings, statistics, the byte-bounded LRU map.

Policy (issue 5, DESIGN.md "every cache key says what produced the value"):

- Every cache is bounded by bytes (each value's tensor bytes, ``nbytes``), evicts the least
  recently used entry first, and may expire entries after a time to live. A value larger than the
  whole cache is not stored and is counted (``oversize``), never an error. Capacity 0 disables a
  cache: nothing is stored, looked up or counted.
- Failures are never cached: only values a computation returned are stored.
- ``cachetools`` maps are not thread-safe, so every access holds the cache's lock. The lock is
  never held while computing, and observers are called after the map's lock is released.

The vision embedding cache (``adapters.local.embedding``) and the prefix (KV) cache
(``adapters.local.prefix``) are built on ``BoundedCache``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from cachetools import Cache, LRUCache, TTLCache

__all__ = (
    "ALL_CACHES",
    "CACHES_OFF",
    "BoundedCache",
    "CacheConfig",
    "CacheEvent",
    "CacheName",
    "CacheObserver",
    "CachePolicy",
    "CacheStats",
    "K",
    "Sized",
    "V",
)

CacheName = Literal["embedding", "prefix"]
CacheEvent = Literal["hit", "miss", "evicted", "expired", "oversize"]
"""``hit``/``miss``: lookups; ``evicted``: removed for the byte bound; ``expired``: removed by the
time to live; ``oversize``: a value larger than the whole cache, not stored."""

_MiB = 1024 * 1024


@dataclass(frozen=True)
class CacheConfig:
    """Sizes of the local adapter's caches (the gateway's ``[cache]`` settings)."""

    embedding_bytes: int = 512 * _MiB
    """Vision-encoder outputs kept, in bytes of tensor data; 0 disables the embedding cache.
    Qwen3-VL-2B in bf16: about 12.6 MB per 1024x768 image (768 tokens x 2048 x 4 tensors)."""
    embedding_ttl_s: float = 0.0
    """Seconds an image's features stay cached after they were stored; 0: until evicted."""
    prefix_bytes: int = 1024 * _MiB
    """Key/value caches of recent prompts (and their completions) kept for prefix reuse, in
    bytes; 0 disables prefix reuse. Qwen3-VL-2B in bf16: about 112 KiB per token."""
    prefix_ttl_s: float = 0.0
    """Seconds a prompt's key/value cache stays reusable after it was stored; 0: until evicted."""
    prefix_min_tokens: int = 16
    """A cached prefix is reused only when it covers at least this many prompt tokens."""

    def __post_init__(self) -> None:
        if min(self.embedding_bytes, self.prefix_bytes, self.prefix_min_tokens) < 0:
            raise ValueError("cache sizes and prefix_min_tokens must not be negative")
        if min(self.embedding_ttl_s, self.prefix_ttl_s) < 0:
            raise ValueError("cache TTLs must not be negative (0 means no expiry)")


@dataclass(frozen=True)
class CachePolicy:
    """Which caches one request may use (a debugging bypass; both by default)."""

    embedding: bool = True
    """Look up and store this request's vision features."""
    prefix: bool = True
    """Reuse a cached prompt prefix, and store this request's key/value cache."""


ALL_CACHES = CachePolicy()
CACHES_OFF = CachePolicy(embedding=False, prefix=False)


@dataclass(frozen=True)
class CacheStats:
    """A cache's counters (since start) and its current size."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    """Entries removed to stay within the byte bound."""
    expirations: int = 0
    """Entries removed because their time to live passed."""
    oversize: int = 0
    """Values not stored because they alone exceed the capacity."""
    bytes_used: int = 0
    entries: int = 0
    capacity_bytes: int = 0


class CacheObserver(Protocol):
    """Receives cache activity (e.g. to export metrics).

    Called from the event loop, helper threads and the model's worker thread, after the map's
    lock is released; it must be thread-safe, fast, and must not call back into the cache.
    """

    def counted(self, cache: CacheName, event: CacheEvent, n: int) -> None: ...

    def usage(
        self, cache: CacheName, *, bytes_used: int, entries: int, capacity_bytes: int
    ) -> None: ...


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Sized)


def _sizeof(value: Any) -> int:
    return int(value.nbytes)


class _Counting:
    """Mixin for cachetools maps: counts LRU evictions and TTL expirations."""

    evicted = 0
    expired = 0

    def popitem(self) -> Any:
        item = super().popitem()  # type: ignore[misc]
        self.evicted += 1
        return item

    def expire(self, time: Any = None) -> Any:
        gone = super().expire(time)  # type: ignore[misc]
        self.expired += len(gone)
        return gone


class _LRU(_Counting, LRUCache):
    pass


class _TTL(_Counting, TTLCache):
    pass


class BoundedCache(Generic[K, V]):
    """A thread-safe LRU map bounded by the sum of its values' ``nbytes``, with optional TTL."""

    def __init__(
        self,
        name: CacheName,
        capacity_bytes: int,
        ttl_s: float = 0.0,
        *,
        observer: CacheObserver | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.capacity_bytes = max(0, capacity_bytes)
        self._observer = observer
        self._lock = threading.Lock()
        self._map: Any = (
            _TTL(self.capacity_bytes, ttl_s, timer=timer, getsizeof=_sizeof)
            if ttl_s > 0
            else _LRU(self.capacity_bytes, getsizeof=_sizeof)
        )
        self._hits = self._misses = self._oversize = 0
        self._emit(CacheStats(), self._snapshot())

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now most recently used), or None. Not counted."""
        return self.update(lambda m: m.get(key))

    def peek(self) -> list[tuple[K, V]]:
        """All live entries, in no particular order, without touching their recency."""

        def items(m: Any) -> list[tuple[K, V]]:
            if isinstance(m, TTLCache):
                m.expire()
            # Cache.__getitem__ reads without the LRU/TTL bookkeeping of the subclasses.
            return [(k, Cache.__getitem__(m, k)) for k in m]

        return self.update(items)

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` (evicting as needed); False, and counted, if it alone is too large."""
        if not self.enabled:
            return False
        if value.nbytes > self.capacity_bytes:
            self.count(oversize=1)
            return False
        self.update(lambda m: m.__setitem__(key, value))
        return True

    def discard(self, key: K) -> None:
        self.update(lambda m: m.pop(key, None))

    def clear(self) -> None:
        self.update(lambda m: m.clear())

    def count(self, *, hits: int = 0, misses: int = 0, oversize: int = 0) -> None:
        """Record lookups the owner made (hit/miss policy is the owner's)."""
        if self.enabled:
            self.update(lambda m: None, hits=hits, misses=misses, oversize=oversize)

    def update(self, op: Callable[[Any], Any], **counts: int) -> Any:
        """Run ``op(map)`` under the lock, then report what changed to the observer."""
        with self._lock:
            before = self._snapshot()
            result = op(self._map)
            self._hits += counts.get("hits", 0)
            self._misses += counts.get("misses", 0)
            self._oversize += counts.get("oversize", 0)
            after = self._snapshot()
        self._emit(before, after)
        return result

    def stats(self) -> CacheStats:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> CacheStats:
        m = self._map
        size = int(m.currsize)  # expires TTL entries first
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=m.evicted,
            expirations=m.expired,
            oversize=self._oversize,
            bytes_used=size,
            entries=len(m),
            capacity_bytes=self.capacity_bytes,
        )

    def _emit(self, before: CacheStats, after: CacheStats) -> None:
        observer = self._observer
        if observer is None or not self.enabled:
            return
        for event, field in (
            ("hit", "hits"),
            ("miss", "misses"),
            ("evicted", "evictions"),
            ("expired", "expirations"),
            ("oversize", "oversize"),
        ):
            n = getattr(after, field) - getattr(before, field)
            if n:
                observer.counted(self.name, event, n)  # type: ignore[arg-type]
        if before == CacheStats() or (after.bytes_used, after.entries) != (
            before.bytes_used,
            before.entries,
        ):
            observer.usage(
                self.name,
                bytes_used=after.bytes_used,
                entries=after.entries,
                capacity_bytes=after.capacity_bytes,
            )
