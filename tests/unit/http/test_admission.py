from __future__ import annotations

import asyncio

import pytest

from gateway.errors import ServerOverloaded
from gateway.http import Admission


async def test_refuses_beyond_slots_plus_queue_with_retry_after() -> None:
    admission = Admission(max_concurrent=1, max_queue=1, retry_after_s=3)
    first, second = admission.admit(), admission.admit()
    with pytest.raises(ServerOverloaded) as info:
        admission.admit()
    assert info.value.status == 503
    assert info.value.headers["Retry-After"] == "3"
    first.release()
    second.release()
    assert admission.admitted == 0


async def test_waiting_for_a_slot_and_cancelling_while_queued_releases_everything() -> None:
    admission = Admission(max_concurrent=1, max_queue=2)
    running = admission.admit()
    await running.acquire_slot()
    queued = admission.admit()
    waiter = asyncio.create_task(queued.acquire_slot())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert (admission.running, admission.queued) == (1, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    queued.release()
    assert (admission.admitted, admission.running) == (1, 1)
    running.release()
    assert (admission.admitted, admission.running) == (0, 0)
    # The slot is free again.
    again = admission.admit()
    await asyncio.wait_for(again.acquire_slot(), 1)
    again.release()
    again.release()  # idempotent
    assert admission.admitted == 0


async def test_slot_passes_to_the_next_waiter() -> None:
    admission = Admission(max_concurrent=1, max_queue=1)
    a, b = admission.admit(), admission.admit()
    await a.acquire_slot()
    waiter = asyncio.create_task(b.acquire_slot())
    a.release()
    await asyncio.wait_for(waiter, 1)
    assert admission.running == 1
    b.release()
