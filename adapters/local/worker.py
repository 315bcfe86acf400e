"""The model's own thread: one piece of model work at a time, results bridged to asyncio.

Qwen3-VL keeps state on the model object between calls (``rope_deltas``), so calls into one model
instance must never interleave: every use of the model runs as a ``Job`` (``adapters.local.jobs``)
on the single thread of a ``ModelWorker``. A job reports through its ``Channel`` and is told to
stop through its ``cancel`` event, checked between pieces and at every step.

The worker runs in steps. Each step it:

1. takes the queued jobs: plain jobs run at once, or, when ``run`` returns ``Pieces`` (a vision
   encoding), wait to be resumed piece by piece; slot jobs (generations) are held;
2. starts held slot jobs while the batch has room and memory for them (``Stepper.admits``), in
   ``FairQueue`` order;
3. spends the step's token budget (``StepBudget``, sized by ``StepPacer`` to a step time): the
   stepper decodes a token for every running sequence and prefills chunks of the starting ones
   (``Stepper.step``), then the pieces of plain jobs take what is left, in submission order.

So a running stream gets a token every step whatever arrives. A slot job is pending until the
stepper reports it ended; without a stepper, slot jobs run as plain jobs."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import torch

from adapters.base import AdapterError, GenerationCancelled
from adapters.local.jobs import (
    Channel,
    EngineObserver,
    Failure,
    FairQueue,
    Job,
    Pieces,
    StepBudget,
    StepPacer,
    Stepper,
    WorkerClosed,
)

__all__ = ("Channel", "Failure", "Job", "ModelWorker", "Stepper", "WorkerClosed")

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ModelWorker:
    """A single dedicated thread owning a model, fed by a FIFO job queue."""

    def __init__(
        self,
        name: str = "vlm-model",
        *,
        step_tokens: int = 256,
        step_seconds: float = 0.0,
        fair_wait_s: float = 30.0,
        observer: EngineObserver | None = None,
    ) -> None:
        self.pacer = StepPacer(step_tokens, step_seconds)
        self._observer = observer
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._stepper: Stepper | None = None
        self._held = FairQueue(fair_wait_s)
        self.budget = self.pacer.budget()  # the current step's (``Pieces`` read it)
        self._current: Job | None = None
        self._pieces: collections.deque[tuple[Job, Pieces]] = collections.deque()

    def start(self) -> None:
        self._thread.start()

    def use(self, stepper: Stepper) -> None:
        """Batch slot jobs in ``stepper`` (call on the worker thread, or before ``start``)."""
        self._stepper = stepper

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False on timeout."""
        return self._idle.wait(timeout)

    def submit(
        self,
        run: Callable[[Job], Pieces | None],
        *,
        slot: bool = False,
        positions: tuple[int, int] = (0, 0),
        owner: str = "",
    ) -> Job:
        """Queue ``run`` for the worker thread; read its results from ``job.channel``.

        ``slot``: ``run`` joins the stepper's batch (see ``use``), which admits it when its
        ``positions`` fit; plain jobs run to completion (a piece at a time when ``run`` returns
        ``Pieces``).
        """
        loop = asyncio.get_running_loop()
        job = Job(run, Channel(loop), slot=slot, positions=positions, owner=owner)
        with self._lock:
            if self._closed:
                raise WorkerClosed()
            self._pending += 1
            self._idle.clear()
            self._jobs.put(job)
        return job

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the worker thread and return its result (or raise its exception)."""

        def run(job: Job) -> None:
            job.channel.put(fn())

        return await self._result(self.submit(run))

    async def call_pieces(self, fn: Callable[[], Generator[None, None, T]]) -> T:
        """Run the generator ``fn()`` a piece per step on the worker thread; its return value."""

        def run(job: Job) -> Pieces:
            job.channel.put((yield from fn()))

        return await self._result(self.submit(run))

    async def _result(self, job: Job) -> Any:
        try:
            return await job.channel.get()
        finally:
            job.cancel.set()

    async def aclose(self) -> None:
        """Cancel the running jobs, fail the queued ones, and join the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Under the lock: no job can be queued behind the end marker.
            self._jobs.put(None)
        for job in [self._current, *(job for job, _ in list(self._pieces))]:
            if job is not None:
                job.cancel.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while self._take(block=not (self._held or self._pieces or self._running())):
            self._admit()
            streaming = self._stepper is not None and self._stepper.streaming
            self.budget = budget = self.pacer.budget(streaming)
            started = time.perf_counter()
            self._advance(budget)
            self._resume(budget)
            took = time.perf_counter() - started
            self.pacer.observe(budget, took)
            if budget.spent and self._observer is not None:
                self._observer.step(budget.spent, took)
        self._stop()

    def _running(self) -> bool:
        return bool(self._stepper and len(self._stepper))

    def _take(self, *, block: bool) -> bool:
        """Run the queued plain jobs, hold the slot jobs; False at the end marker."""
        while True:
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            if job.slot and self._stepper is not None:
                self._held.add(job)
            else:
                self._execute(job)
            block = False

    def _admit(self) -> None:
        """Start held slot jobs while the batch admits them (see the module docstring)."""
        stepper = self._stepper
        while self._held and stepper is not None:
            job = self._held.next()
            if not job.cancel.is_set() and not stepper.admits(job):
                return  # the chosen job waits for room; later ones do not overtake it
            self._held.remove(job)
            if self._execute(job):
                self._held.entered(job)

    def _advance(self, budget: StepBudget) -> None:
        stepper = self._stepper
        if stepper is None or not len(stepper):
            return
        try:
            with torch.inference_mode():
                ended = stepper.step(budget)
        except Exception as exc:  # the stepper reports its own failures; this is a backstop
            logger.exception("batch step failed")
            ended = stepper.abort(exc)
        self._ended(ended)

    def _resume(self, budget: StepBudget) -> None:
        """Run pieces of plain jobs, in submission order, while the budget lasts."""
        while self._pieces and not budget.exhausted:
            job, pieces = self._pieces[0]
            try:
                if job.cancel.is_set() or self._closed:
                    pieces.close()
                    raise GenerationCancelled("cancelled")
                with torch.inference_mode():
                    next(pieces)
                continue
            except StopIteration:
                pass
            except Exception as exc:
                self._failed(job, exc)
            self._pieces.popleft()
            self._done()

    def _ended(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._held.left(job)
            self._done()

    def _stop(self) -> None:
        """At the end marker: end the running batch, the resumable jobs and the held jobs."""
        if self._stepper is not None:
            self._ended(self._stepper.abort(WorkerClosed()))
        for job, pieces in self._pieces:
            pieces.close()
            job.channel.put(Failure(WorkerClosed()))
            self._done()
        self._pieces.clear()
        for job in self._held.drain():
            job.channel.put(Failure(WorkerClosed()))
            self._done()

    def _execute(self, job: Job) -> bool:
        """Run ``job``; True when it joined the stepper (it stays pending)."""
        try:
            if self._closed:
                raise WorkerClosed()
            if job.cancel.is_set():
                raise GenerationCancelled("cancelled before it started")
            job.started = time.perf_counter()
            self._current = job
            with torch.inference_mode():
                pieces = job.run(job)
            if isinstance(pieces, Generator):
                self._pieces.append((job, pieces))
                return False
            if job.slot and self._stepper is not None and job in self._stepper:
                return True
        except Exception as exc:
            self._failed(job, exc)
        finally:
            self._current = None
        self._done()
        return False

    def _failed(self, job: Job, exc: BaseException) -> None:
        if not isinstance(exc, AdapterError):
            logger.exception("model job failed", exc_info=exc)
        job.channel.put(Failure(exc))

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()
