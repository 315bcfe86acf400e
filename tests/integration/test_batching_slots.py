"""Continuous batching in LocalVLMAdapter at small ``max_batch_size`` (the tiny random Qwen3-VL):
a request waiting for a slot, when cancelled, never runs; a batch of one is the same path.
Ground truth as in ``test_batching.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.base import collect
from adapters.local import CACHES_OFF
from tests.integration.batching_support import Client, batch_of, make_adapter, request, same, until
from tests.reference import Reference, assert_matches

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_request_cancelled_while_waiting_for_a_slot_never_runs(
    tiny_model_dir: Path,
) -> None:
    adapter = await make_adapter(tiny_model_dir, 2)
    try:
        batch = batch_of(adapter)
        names = ("hi", "count", "two")
        expected = [await collect(adapter.stream(request(n, 80), caches=CACHES_OFF)) for n in names]
        clients = [Client(adapter, request(n, 80), CACHES_OFF) for n in names[:2]]
        await clients[0].started.wait()
        # Text only (no encoder job) and caches on: had it run, its prefix would be stored.
        waiting = asyncio.create_task(collect(adapter.stream(request("weather", 80))))
        # Two running (a full batch), the third queued behind them.
        assert await until(lambda: adapter.worker.pending == 3 and len(batch) == 2, seconds=5.0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        clients.append(Client(adapter, request(names[2], 80), CACHES_OFF))
        results = await asyncio.gather(*(c.task for c in clients))
        assert batch.largest == 2  # never more than max_batch_size
        for got, want in zip(results, expected, strict=True):
            same(got, want)
        assert await asyncio.to_thread(adapter.worker.wait_idle, 5.0)
        stats = adapter.cache_stats()["prefix"]
        assert (stats.misses, stats.entries) == (1, 0)  # looked up, never prefilled
    finally:
        await adapter.aclose()


async def test_a_batch_of_one_is_the_same_path(tiny_model_dir: Path, reference: Reference) -> None:
    """``max_batch_size = 1``: requests take turns through the one batch, each as model.generate."""
    adapter = await make_adapter(tiny_model_dir, 1)
    try:
        batch = batch_of(adapter)
        assert batch.capacity == 1
        requests = [request("picture", 30), request("why", 20), request("count", 25)]
        results = await asyncio.gather(*(collect(adapter.stream(r)) for r in requests))
        for got, r in zip(results, requests, strict=True):
            assert_matches(got, reference.expect(r))
        assert batch.largest == 1
        assert batch.steps > 0
    finally:
        await adapter.aclose()
