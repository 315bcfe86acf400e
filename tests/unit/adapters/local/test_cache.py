"""BoundedCache and EmbeddingCache: byte bound, LRU, TTL, oversize skip, observer, single flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.local.cache import BoundedCache, CacheConfig, CacheStats
from adapters.local.embedding import EmbeddingCache


@dataclass(frozen=True, eq=False)
class Blob:
    nbytes: int
    tag: str = ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A CacheObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.usages: list[tuple[str, int, int, int]] = []

    def counted(self, cache: str, event: str, n: int) -> None:
        self.counts[cache, event] = self.counts.get((cache, event), 0) + n

    def usage(self, cache: str, *, bytes_used: int, entries: int, capacity_bytes: int) -> None:
        self.usages.append((cache, bytes_used, entries, capacity_bytes))


def test_evicts_least_recently_used_to_stay_within_the_byte_bound() -> None:
    cache: BoundedCache[str, Blob] = BoundedCache("embedding", 100)
    a, b, c = Blob(40, "a"), Blob(40, "b"), Blob(40, "c")
    assert cache.put("a", a)
    assert cache.put("b", b)
    assert cache.get("a") is a  # now "b" is the least recently used
    assert cache.put("c", c)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (a, None, c)
    stats = cache.stats()
    assert (stats.bytes_used, stats.entries, stats.evictions, stats.capacity_bytes) == (
        80,
        2,
        1,
        100,
    )
    assert cache.put("big", Blob(100))  # exactly the capacity fits, evicting everything else
    assert cache.stats().evictions == 3
    assert cache.stats().entries == 1


def test_a_value_larger_than_the_cache_is_skipped_and_counted() -> None:
    cache: BoundedCache[str, Blob] = BoundedCache("embedding", 100)
    cache.put("a", Blob(60))
    assert not cache.put("huge", Blob(101))
    stats = cache.stats()
    assert (stats.oversize, stats.evictions, stats.entries, stats.bytes_used) == (1, 0, 1, 60)
    assert cache.get("huge") is None


def test_entries_expire_after_their_time_to_live() -> None:
    clock = Clock()
    cache: BoundedCache[str, Blob] = BoundedCache("prefix", 100, ttl_s=10.0, timer=clock)
    cache.put("old", Blob(30))
    clock.now += 6
    cache.put("new", Blob(30))
    assert cache.get("old") is not None  # a read does not extend the time to live
    clock.now += 5
    assert cache.get("old") is None
    assert cache.get("new") is not None
    stats = cache.stats()
    assert (stats.expirations, stats.evictions, stats.entries, stats.bytes_used) == (1, 0, 1, 30)
    clock.now += 10
    assert cache.peek() == []
    assert cache.stats().bytes_used == 0


def test_capacity_zero_disables_the_cache() -> None:
    recorder = Recorder()
    cache: BoundedCache[str, Blob] = BoundedCache("embedding", 0, observer=recorder)
    assert not cache.enabled
    assert not cache.put("a", Blob(1))
    cache.count(hits=1, misses=1)
    assert cache.stats() == CacheStats()
    assert recorder.counts == {}
    assert recorder.usages == []


def test_observer_hears_every_change() -> None:
    recorder = Recorder()
    cache: BoundedCache[str, Blob] = BoundedCache("embedding", 100, observer=recorder)
    assert recorder.usages == [("embedding", 0, 0, 100)]
    cache.put("a", Blob(60))
    cache.put("b", Blob(60))
    cache.put("c", Blob(200))
    cache.count(hits=2, misses=3)
    assert recorder.counts == {
        ("embedding", "evicted"): 1,
        ("embedding", "oversize"): 1,
        ("embedding", "hit"): 2,
        ("embedding", "miss"): 3,
    }
    assert recorder.usages[-1] == ("embedding", 60, 1, 100)


def test_concurrent_threads_keep_the_bound() -> None:
    cache: BoundedCache[int, Blob] = BoundedCache("embedding", 1000)

    def hammer(offset: int) -> None:
        for i in range(500):
            cache.put(offset + i % 50, Blob(7 + i % 13))
            cache.get(offset + (i * 7) % 50)
            cache.peek()

    threads = [threading.Thread(target=hammer, args=(n * 100,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.bytes_used <= 1000
    assert stats.bytes_used == sum(v.nbytes for _, v in cache.peek())


def test_cache_config_refuses_negative_sizes() -> None:
    assert CacheConfig().embedding_bytes == 512 * 1024 * 1024
    with pytest.raises(ValueError, match="negative"):
        CacheConfig(prefix_bytes=-1)
    with pytest.raises(ValueError, match="TTL"):
        CacheConfig(embedding_ttl_s=-1)


class Encoder:
    """An async compute function for ``fetch`` that counts calls and can be held or failed."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = keys
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, indices: list[int]) -> list[Blob]:
        return await self.compute(self.keys, indices)

    def fetch(self, cache: EmbeddingCache[str, Blob], keys: list[str]) -> asyncio.Task[Any]:
        """``cache.fetch(keys)`` in a task, computing with this encoder."""
        return asyncio.create_task(cache.fetch(keys, lambda ix: self.compute(keys, ix)))

    async def compute(self, keys: Sequence[str], indices: list[int]) -> list[Blob]:
        self.calls.append([keys[i] for i in indices])
        self.entered.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [Blob(10, keys[i]) for i in indices]


async def test_fetch_computes_only_the_misses_and_dedupes_within_a_call() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(1000)
    first = Encoder(["a", "b", "a"])
    got = await cache.fetch(first.keys, first)
    assert first.calls == [["a", "b"]]
    assert [v.tag for v in got.values] == ["a", "b", "a"]
    assert got.values[0] is got.values[2]
    assert got.reused == [False, False, True]
    second = Encoder(["b", "c"])
    got = await cache.fetch(second.keys, second)
    assert second.calls == [["c"]]
    assert got.reused == [True, False]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 3, 3)


async def test_failures_are_not_cached() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(1000)
    broken = Encoder(["a"])
    broken.fail = RuntimeError("encoder exploded")
    with pytest.raises(RuntimeError):
        await cache.fetch(["a"], broken)
    assert cache.stats().entries == 0
    working = Encoder(["a"])
    got = await cache.fetch(["a"], working)
    assert working.calls == [["a"]]
    assert got.reused == [False]


async def test_concurrent_requests_for_one_image_compute_it_once() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(1000)
    encoder = Encoder([])
    encoder.gate.clear()
    owner = encoder.fetch(cache, ["a"])
    await encoder.entered.wait()  # "a" is being computed now
    waiters = [encoder.fetch(cache, ["a"]) for _ in range(5)]
    mixed = encoder.fetch(cache, ["b", "a"])
    await asyncio.sleep(0.01)
    assert encoder.calls == [["a"], ["b"]]  # "b" started at once; nobody recomputes "a"
    encoder.gate.set()
    results = await asyncio.gather(owner, *waiters, mixed)
    assert encoder.calls == [["a"], ["b"]]
    value = results[0].values[0]
    assert all(r.values[-1] is value for r in results)
    assert results[0].reused == [False]
    assert all(r.reused == [True] for r in results[1:-1])
    assert results[-1].reused == [False, True]


async def test_waiters_compute_themselves_when_the_computing_caller_goes_away() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(1000)
    held = Encoder(["a"])
    held.gate.clear()
    owner = asyncio.create_task(cache.fetch(["a"], held))
    await held.entered.wait()
    fresh = Encoder(["a"])
    waiter = asyncio.create_task(cache.fetch(["a"], fresh))
    await asyncio.sleep(0.01)
    assert fresh.calls == []
    owner.cancel()  # the client of the first request disconnected mid-encode
    with pytest.raises(asyncio.CancelledError):
        await owner
    got = await waiter
    assert fresh.calls == [["a"]]
    assert got.reused == [False]
    assert cache.stats().entries == 1


async def test_a_cancelled_waiter_does_not_disturb_the_computation() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(1000)
    encoder = Encoder(["a"])
    encoder.gate.clear()
    owner = asyncio.create_task(cache.fetch(["a"], encoder))
    await encoder.entered.wait()
    waiter = asyncio.create_task(cache.fetch(["a"], encoder))
    await asyncio.sleep(0.01)
    waiter.cancel()
    encoder.gate.set()
    got = await owner
    assert got.values[0].tag == "a"
    assert waiter.cancelled()
    assert cache.stats().entries == 1


async def test_disabled_embedding_cache_always_computes() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(0)
    encoder = Encoder(["a", "a"])
    await cache.fetch(encoder.keys, encoder)
    await cache.fetch(encoder.keys, encoder)
    assert encoder.calls == [["a", "a"], ["a", "a"]]
    assert cache.stats() == CacheStats()


async def test_oversize_features_are_used_but_not_stored() -> None:
    cache: EmbeddingCache[str, Blob] = EmbeddingCache(5)
    encoder = Encoder(["a"])
    got = await cache.fetch(["a"], encoder)
    await cache.fetch(["a"], encoder)
    assert got.values[0].nbytes == 10
    assert encoder.calls == [["a"], ["a"]]
    assert cache.stats().oversize == 2
