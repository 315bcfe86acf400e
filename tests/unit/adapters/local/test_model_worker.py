"""ModelWorker: one thread, FIFO jobs, results and errors bridged to asyncio, clean shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from adapters.base import GenerationCancelled
from adapters.local.worker import Channel, Failure, Job, ModelWorker, WorkerClosed


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    w = ModelWorker(name="test-worker")
    w.start()
    yield w
    await w.aclose()


async def test_calls_run_in_order_on_one_thread(worker: ModelWorker) -> None:
    seen: list[tuple[int, str]] = []

    def step(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * i

    results = await asyncio.gather(*(worker.call(lambda i=i: step(i)) for i in range(20)))
    assert results == [i * i for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"test-worker"}
    assert worker.wait_idle(1.0)
    assert worker.pending == 0


async def test_exceptions_reach_the_caller(worker: ModelWorker) -> None:
    def boom() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await worker.call(boom)
    assert await worker.call(lambda: "still serving") == "still serving"


async def test_streaming_job_and_cancelled_job(worker: ModelWorker) -> None:
    gate = threading.Event()

    def producer(job: Job) -> None:
        gate.wait(5)
        for i in range(3):
            job.channel.put(i)

    first = worker.submit(producer)
    second = worker.submit(lambda job: job.channel.put("ran"))
    second.cancel.set()  # consumer left while queued: the job must not run
    gate.set()
    assert [await first.channel.get() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(GenerationCancelled):
        await second.channel.get()
    assert worker.wait_idle(1.0)
    assert first.started is not None
    assert first.queue_seconds >= 0


async def test_close_fails_queued_jobs_and_refuses_new_ones() -> None:
    worker = ModelWorker()
    worker.start()
    gate = threading.Event()
    running = worker.submit(lambda job: (gate.wait(5), job.channel.put(job.cancel.is_set())))
    queued = worker.submit(lambda job: job.channel.put("never"))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(worker.aclose())
    await asyncio.sleep(0.05)
    gate.set()
    await closing
    assert await running.channel.get() is True  # the running job was told to stop
    with pytest.raises(WorkerClosed):
        await queued.channel.get()
    with pytest.raises(WorkerClosed):
        worker.submit(lambda job: None)
    assert worker.pending == 0


def test_channel_put_after_the_loop_closed_reports_false() -> None:
    loop = asyncio.new_event_loop()
    channel: Channel[int] = Channel(loop)
    assert channel.put(1) is True
    loop.close()
    assert channel.put(Failure(RuntimeError())) is False
