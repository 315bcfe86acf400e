"""ModelWorker with a stepper: slot jobs join a running batch between steps, up to capacity.

``Counter`` is a real (model-free) ``Stepper``: each joined job receives one number per step and
ends after its own number of steps.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.base import GenerationCancelled
from adapters.local.jobs import StepBudget
from adapters.local.worker import Failure, Job, ModelWorker, WorkerClosed


class Counter:
    """Sends each job its step numbers 0..steps-1, then ``"done"``; records batch sizes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.jobs: dict[Job, tuple[int, int]] = {}
        """job -> (steps done, steps wanted)."""
        self.sizes: list[int] = []
        self.fail_next = False

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job: object) -> bool:
        return job in self.jobs

    @property
    def streaming(self) -> bool:
        return bool(self.jobs)

    def admits(self, job: Job) -> bool:
        return len(self.jobs) < self.capacity

    def join(self, steps: int) -> Callable[[Job], None]:
        def run(job: Job) -> None:
            self.jobs[job] = (0, steps)

        return run

    def step(self, budget: StepBudget) -> list[Job]:
        budget.spend("decode", len(self.jobs))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("forward failed")
        self.sizes.append(len(self.jobs))
        ended = []
        for job, (done, wanted) in list(self.jobs.items()):
            job.channel.put(done)
            if done + 1 == wanted:
                job.channel.put("done")
                del self.jobs[job]
                ended.append(job)
            else:
                self.jobs[job] = (done + 1, wanted)
        return ended

    def abort(self, error: BaseException) -> list[Job]:
        jobs = list(self.jobs)
        for job in jobs:
            job.channel.put(Failure(error))
        self.jobs.clear()
        return jobs


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    w = ModelWorker(name="batch-worker")
    w.start()
    yield w
    await w.aclose()


async def drain(job: Job) -> list[object]:
    items: list[object] = []
    while (item := await job.channel.get()) != "done":
        items.append(item)
    return items


async def last_error(job: Job) -> BaseException:
    """Read ``job``'s items until its failure; the error."""
    try:
        while True:
            await job.channel.get()
    except Exception as exc:
        return exc


async def test_slot_jobs_share_steps_up_to_capacity_in_arrival_order(worker: ModelWorker) -> None:
    counter = Counter(capacity=2)
    await worker.call(lambda: worker.use(counter))
    # call() returns once the result is sent; the worker counts the job done just after.
    assert worker.wait_idle(1.0)
    gate = threading.Event()
    blocker = worker.submit(lambda job: (gate.wait(5), job.channel.put("open")))
    jobs = [worker.submit(counter.join(n), slot=True) for n in (3, 5, 2, 1)]
    assert worker.pending == 5
    gate.set()
    assert await blocker.channel.get() == "open"
    results = await asyncio.gather(*(drain(j) for j in jobs))
    assert results == [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1], [0]]
    # Two at once; the third joins when the first ends, the fourth when the third ends.
    assert counter.sizes == [2, 2, 2, 2, 2, 1]
    assert worker.wait_idle(1.0)
    assert worker.pending == 0


async def test_plain_jobs_run_between_steps(worker: ModelWorker) -> None:
    counter = Counter(capacity=4)
    await worker.call(lambda: worker.use(counter))
    long = worker.submit(counter.join(100000), slot=True)
    assert await long.channel.get() == 0
    assert await worker.call(lambda: "between steps") == "between steps"
    assert isinstance(await long.channel.get(), int)  # still running
    await worker.aclose()
    assert isinstance(await last_error(long), WorkerClosed)
    assert worker.pending == 0


async def test_a_slot_job_cancelled_while_held_never_runs(worker: ModelWorker) -> None:
    counter = Counter(capacity=1)
    await worker.call(lambda: worker.use(counter))
    first = worker.submit(counter.join(50), slot=True)
    held = worker.submit(counter.join(2), slot=True)
    third = worker.submit(counter.join(2), slot=True)
    held.cancel.set()
    assert len(await drain(first)) == 50
    with pytest.raises(GenerationCancelled):
        await held.channel.get()
    assert await drain(third) == [0, 1]
    assert max(counter.sizes) == 1
    assert worker.wait_idle(1.0)


async def test_a_failing_step_ends_the_batch_and_the_worker_goes_on(worker: ModelWorker) -> None:
    counter = Counter(capacity=3)
    await worker.call(lambda: worker.use(counter))
    gate = threading.Event()
    worker.submit(lambda job: gate.wait(5))
    jobs = [worker.submit(counter.join(10), slot=True) for _ in range(2)]
    counter.fail_next = True
    gate.set()
    for job in jobs:
        with pytest.raises(RuntimeError, match="forward failed"):
            await job.channel.get()
    again = worker.submit(counter.join(2), slot=True)
    assert await drain(again) == [0, 1]
    assert worker.wait_idle(1.0)


async def test_close_ends_running_and_held_slot_jobs() -> None:
    worker = ModelWorker()
    worker.start()
    counter = Counter(capacity=1)
    await worker.call(lambda: worker.use(counter))
    running = worker.submit(counter.join(10**9), slot=True)
    held = worker.submit(counter.join(1), slot=True)
    assert await running.channel.get() == 0
    await worker.aclose()
    for job in (running, held):
        assert isinstance(await last_error(job), WorkerClosed)
    assert worker.pending == 0


async def test_without_a_stepper_slot_jobs_run_to_completion(worker: ModelWorker) -> None:
    order: list[int] = []

    def numbered(i: int) -> Callable[[Job], None]:
        def run(job: Job) -> None:
            order.append(i)
            job.channel.put(i)

        return run

    jobs = [worker.submit(numbered(i), slot=True) for i in range(3)]
    assert [await j.channel.get() for j in jobs] == [0, 1, 2]
    assert order == [0, 1, 2]
    assert worker.wait_idle(1.0)


async def test_an_owner_with_fewer_running_jobs_goes_first() -> None:
    # heavy's first job starts first (the oldest); then light's, before heavy's others.
    assert await _finishing_order(fair_wait_s=30.0) == ["heavy", "light", "heavy", "heavy"]


async def test_a_job_waiting_too_long_goes_first_whatever_its_owner() -> None:
    assert await _finishing_order(fair_wait_s=0.0) == ["heavy", "heavy", "heavy", "light"]


async def _finishing_order(fair_wait_s: float) -> list[str]:
    """Owners in the order their jobs end: three of "heavy" queued before one of "light", on a
    batch of one place."""
    worker = ModelWorker(name="fair-worker", fair_wait_s=fair_wait_s)
    counter = Counter(capacity=1)
    worker.use(counter)
    worker.start()
    try:
        gate = threading.Event()
        worker.submit(lambda job: (gate.wait(5), None)[1])  # holds the queue until all are in
        owners = ["heavy", "heavy", "heavy", "light"]
        jobs = [worker.submit(counter.join(2), slot=True, owner=o) for o in owners]
        gate.set()
        order: list[str] = []

        async def finish(owner: str, job: Job) -> None:
            await drain(job)
            order.append(owner)

        await asyncio.gather(*(finish(o, j) for o, j in zip(owners, jobs, strict=True)))
        return order
    finally:
        await worker.aclose()
