"""The model's own thread: one job at a time, results bridged to asyncio.

Qwen3-VL keeps state on the model object between calls (``rope_deltas``), so calls into one model
instance must never interleave: every use of the model (loading, warm-up, vision encoding,
generation) runs as a ``Job`` on the single thread of a ``ModelWorker``, in submission order.

A job talks back through its ``Channel`` (``loop.call_soon_threadsafe`` into an ``asyncio.Queue``)
and is told to stop through its ``cancel`` event, which generation checks after every decode step.
Vision encoding runs as its own job, behind the embedding cache (``adapters.local.reuse``), before
the generation job that consumes its features.

Continuous batching (``use(stepper)``): a job submitted with ``slot=True`` needs a place in the
running batch. Between two decode steps the worker runs every queued plain job, then starts held
slot jobs while the batch has room (their ``run`` prefills and joins the batch), then advances
every running sequence by one step (``Stepper.step``). A slot job stays pending until the batch
reports it ended. Without a stepper every job runs to completion, in submission order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch

from adapters.base import AdapterError, GenerationCancelled
from adapters.local.vision import VisionFeatures, encode_images, encoder_outputs

__all__ = (
    "Channel",
    "Failure",
    "Job",
    "ModelWorker",
    "Stepper",
    "VisionFeatures",
    "WorkerClosed",
    "encode_images",
    "encoder_outputs",
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WorkerClosed(AdapterError):
    def __init__(self) -> None:
        super().__init__("The model is shutting down.")


@dataclass(frozen=True)
class Failure:
    """A job's terminal item when it raised: the consumer re-raises ``error``."""

    error: BaseException


class Channel(Generic[T]):
    """One-way pipe from the worker thread to one coroutine on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[T | Failure] = asyncio.Queue()

    def put(self, item: T | Failure) -> bool:
        """Thread side. False when the loop is gone (nobody will ever read it)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            return False
        return True

    async def get(self) -> T:
        """Loop side: the next item; a ``Failure`` is raised as its error."""
        item = await self._queue.get()
        if isinstance(item, Failure):
            raise item.error
        return item


@dataclass(eq=False)
class Job:
    """A unit of model work. ``run`` executes on the worker thread and reports via ``channel``."""

    run: Callable[[Job], None]
    channel: Channel[Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set by the consumer when it goes away; the job stops at its next check."""
    submitted: float = field(default_factory=time.perf_counter)
    """``perf_counter`` seconds at submission."""
    started: float | None = None
    """``perf_counter`` seconds when the worker picked it up."""
    slot: bool = False
    """Needs a place in the running batch: waits while it is full; after ``run`` returns, the
    job stays pending while the batch holds it (see ``Stepper``)."""

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.submitted


class Stepper(Protocol):
    """Jobs that run together, one step at a time, on the worker thread
    (``adapters.local.batching``).

    A slot job's ``run`` joins it to the stepper; the job ends when ``step`` or ``abort`` returns
    it, having sent its last item.
    """

    capacity: int
    """Jobs held at once, at most; held slot jobs wait for room."""

    def __len__(self) -> int:
        """Jobs held (running or about to)."""
        ...

    def __contains__(self, job: object) -> bool: ...

    def step(self) -> list[Job]:
        """Advance every held job by one step; the jobs that ended."""
        ...

    def abort(self, error: BaseException) -> list[Job]:
        """End every held job with ``error``; the jobs that ended."""
        ...


class ModelWorker:
    """A single dedicated thread owning a model, fed by a FIFO job queue."""

    def __init__(self, name: str = "vlm-model") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._current: Job | None = None
        self._stepper: Stepper | None = None
        self._held: collections.deque[Job] = collections.deque()

    def start(self) -> None:
        self._thread.start()

    def use(self, stepper: Stepper) -> None:
        """Batch slot jobs in ``stepper`` from now on (call on the worker thread, or before
        ``start``)."""
        self._stepper = stepper

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False on timeout."""
        return self._idle.wait(timeout)

    def submit(self, run: Callable[[Job], None], *, slot: bool = False) -> Job:
        """Queue ``run`` for the worker thread; read its results from ``job.channel``.

        ``slot``: ``run`` joins the stepper's batch (see ``use``); plain jobs run to completion.
        """
        job = Job(run, Channel(asyncio.get_running_loop()), slot=slot)
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

        job = self.submit(run)
        try:
            result: T = await job.channel.get()
        finally:
            job.cancel.set()
        return result

    async def aclose(self) -> None:
        """Cancel the running job, fail the queued ones, and join the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Under the lock: no job can be queued behind the end marker.
            self._jobs.put(None)
        current = self._current
        if current is not None:
            current.cancel.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while self._take(block=not self._held and not self._running()):
            self._admit()
            self._advance()
        self._stop()

    def _running(self) -> bool:
        return self._stepper is not None and len(self._stepper) > 0

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
                self._held.append(job)
            else:
                self._execute(job)
            block = False

    def _admit(self) -> None:
        """Start held slot jobs, oldest first, while the batch has room."""
        stepper = self._stepper
        while self._held and stepper is not None and len(stepper) < stepper.capacity:
            self._execute(self._held.popleft())

    def _advance(self) -> None:
        stepper = self._stepper
        if stepper is None or not len(stepper):
            return
        try:
            with torch.inference_mode():
                ended = stepper.step()
        except Exception as exc:  # the stepper reports its own failures; this is a backstop
            logger.exception("batch step failed")
            ended = stepper.abort(exc)
        for _ in ended:
            self._done()

    def _stop(self) -> None:
        """At the end marker: end the running batch and the held jobs."""
        if self._stepper is not None:
            for _ in self._stepper.abort(WorkerClosed()):
                self._done()
        while self._held:
            self._held.popleft().channel.put(Failure(WorkerClosed()))
            self._done()

    def _execute(self, job: Job) -> None:
        joined = False
        try:
            if self._closed:
                job.channel.put(Failure(WorkerClosed()))
            elif job.cancel.is_set():
                job.channel.put(Failure(GenerationCancelled("cancelled before it started")))
            else:
                job.started = time.perf_counter()
                self._current = job
                with torch.inference_mode():
                    job.run(job)
                joined = job.slot and self._stepper is not None and job in self._stepper
        except Exception as exc:
            if not isinstance(exc, AdapterError):
                logger.exception("model job failed")
            job.channel.put(Failure(exc))
        finally:
            self._current = None
            if not joined:
                self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()
