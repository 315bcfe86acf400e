"""The vision embedding cache: per-image encoder outputs, byte-bounded, single flight.

Policy: values are keyed by everything that produced them (the adapter's key: model id, revision,
dtype, preprocessing parameters, the guard's pixel digest); bounded by their tensor bytes, LRU,
optional TTL, oversize values skipped and counted (``adapters.local.cache.BoundedCache``). Failures
are never stored. ``fetch`` is single flight: callers asking for a key another caller is computing
wait for that computation instead of starting their own; if it fails or its caller goes away, they
compute the key themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic

from adapters.local.cache import BoundedCache, CacheObserver, CacheStats, K, V

__all__ = ("EmbeddingCache", "Lookup")


class _Abandoned(Exception):
    """The caller computing a key failed or went away; waiters compute it themselves."""


@dataclass(frozen=True)
class Lookup(Generic[V]):
    values: list[V]
    """One value per requested key, in order."""
    reused: list[bool]
    """Per key: served from the cache, a concurrent caller's computation, or an earlier
    occurrence of the same key in this call (its work was not repeated)."""


class EmbeddingCache(Generic[K, V]):
    """Per-image vision-encoder outputs, byte-bounded, with single-flight computation.

    Keys must name everything that produced the value (model, revision, dtype, preprocessing,
    pixel digest); the adapter builds them.
    """

    def __init__(
        self,
        capacity_bytes: int,
        ttl_s: float = 0.0,
        *,
        observer: CacheObserver | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store: BoundedCache[K, V] = BoundedCache(
            "embedding", capacity_bytes, ttl_s, observer=observer, timer=timer
        )
        self._inflight: dict[K, concurrent.futures.Future[V]] = {}
        self._lock = threading.Lock()

    async def fetch(
        self, keys: Sequence[K], compute: Callable[[list[int]], Awaitable[Sequence[V]]]
    ) -> Lookup[V]:
        """Values for ``keys``; ``compute(indices)`` returns values for ``keys[i]``, in order.

        ``compute`` is called at most once per round with the keys that are neither cached nor
        being computed by another caller; if that other caller fails or is cancelled, the keys
        it held are computed here in a further round. ``compute``'s errors propagate, and
        nothing is stored for them.
        """
        values: list[V | None] = [None] * len(keys)
        reused = [False] * len(keys)
        if not self.store.enabled:
            computed = await compute(list(range(len(keys))))
            return Lookup(list(computed), reused)
        while True:
            owned, waiting = self._claim(keys, values, reused)
            if owned:
                await self._compute(keys, values, owned, compute)
            retry = False
            for future, positions in waiting.values():
                try:
                    value = await asyncio.wrap_future(future)
                except _Abandoned:
                    retry = True
                    continue
                for i in positions:
                    values[i], reused[i] = value, True
            if not retry:
                return Lookup([v for v in values if v is not None], reused)

    def stats(self) -> CacheStats:
        return self.store.stats()

    def clear(self) -> None:
        self.store.clear()

    def _claim(
        self, keys: Sequence[K], values: list[V | None], reused: list[bool]
    ) -> tuple[dict[K, list[int]], dict[K, tuple[concurrent.futures.Future[V], list[int]]]]:
        owned: dict[K, list[int]] = {}
        waiting: dict[K, tuple[concurrent.futures.Future[V], list[int]]] = {}
        hits = misses = 0
        with self._lock:
            for i, key in enumerate(keys):
                if values[i] is not None:
                    continue
                if key in owned:
                    owned[key].append(i)
                    reused[i] = True
                    hits += 1
                elif key in waiting:
                    waiting[key][1].append(i)
                    hits += 1
                elif (value := self.store.get(key)) is not None:
                    values[i], reused[i] = value, True
                    hits += 1
                elif (future := self._inflight.get(key)) is not None:
                    waiting[key] = (future, [i])
                    hits += 1
                else:
                    future = concurrent.futures.Future()
                    # RUNNING: a waiter's cancellation cannot cancel the owner's future.
                    future.set_running_or_notify_cancel()
                    self._inflight[key] = future
                    owned[key] = [i]
                    misses += 1
        self.store.count(hits=hits, misses=misses)
        return owned, waiting

    async def _compute(
        self,
        keys: Sequence[K],
        values: list[V | None],
        owned: dict[K, list[int]],
        compute: Callable[[list[int]], Awaitable[Sequence[V]]],
    ) -> None:
        order = list(owned)
        try:
            computed = list(await compute([owned[k][0] for k in order]))
            if len(computed) != len(order):
                raise RuntimeError("compute returned a wrong number of values")
        except BaseException:
            self._settle(order, None)
            raise
        for key, value in zip(order, computed, strict=True):
            self.store.put(key, value)
            for i in owned[key]:
                values[i] = value
        self._settle(order, computed)

    def _settle(self, order: list[K], computed: list[V] | None) -> None:
        with self._lock:
            futures = [self._inflight.pop(key) for key in order]
        for i, future in enumerate(futures):
            if computed is None:
                future.set_exception(_Abandoned())
            else:
                future.set_result(computed[i])
