"""The model's own thread: one job at a time, results bridged to asyncio.

Qwen3-VL keeps state on the model object between calls (``rope_deltas``), so calls into one model
instance must never interleave: every use of the model (loading, warm-up, vision encoding,
generation) runs as a ``Job`` on the single thread of a ``ModelWorker``, in submission order.

A job talks back through its ``Channel`` (``loop.call_soon_threadsafe`` into an ``asyncio.Queue``)
and is told to stop through its ``cancel`` event, which generation checks after every decode step.
A later batching scheduler replaces ``ModelWorker._serve`` (several running jobs per step); the
embedding cache sits in front of ``encode_images`` keyed by ``ImageInput.digest``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from adapters.base import AdapterError, GenerationCancelled

__all__ = (
    "Channel",
    "Failure",
    "Job",
    "ModelWorker",
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

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.submitted


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

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False on timeout."""
        return self._idle.wait(timeout)

    def submit(self, run: Callable[[Job], None]) -> Job:
        """Queue ``run`` for the worker thread; read its results from ``job.channel``."""
        job = Job(run, Channel(asyncio.get_running_loop()))
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
        while (job := self._jobs.get()) is not None:
            self._execute(job)

    def _execute(self, job: Job) -> None:
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
        except Exception as exc:
            if not isinstance(exc, AdapterError):
                logger.exception("model job failed")
            job.channel.put(Failure(exc))
        finally:
            self._current = None
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()


@dataclass(frozen=True, eq=False)
class VisionFeatures:
    """One image's vision-encoder output, as the language model consumes it.

    Depends only on that image's pixels (and the model), so it can be cached per image digest.
    """

    embeds: torch.Tensor
    """``(image tokens, text hidden)``: the merged patch embeddings scattered onto placeholders."""
    deepstack: tuple[torch.Tensor, ...]
    """One ``(image tokens, text hidden)`` tensor per DeepStack layer, added to early layers."""

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (the embedding cache's unit)."""
        tensors = (self.embeds, *self.deepstack)
        return sum(t.numel() * t.element_size() for t in tensors)


def encode_images(
    model: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
) -> list[VisionFeatures]:
    """Run the vision encoder over a batch of images; one ``VisionFeatures`` per image.

    Call on the worker thread. ``pixel_values``/``image_grid_thw`` as the image processor
    returns them, already on the model's device.
    """
    out = model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
    # clone(): each image's tensors own their memory instead of viewing the whole batch's.
    return [
        VisionFeatures(
            embeds=embeds.clone(),
            deepstack=tuple(layer[i].clone() for layer in out.deepstack_features),
        )
        for i, embeds in enumerate(out.pooler_output)
    ]


def encoder_outputs(features: Sequence[VisionFeatures]) -> Any:
    """``features`` (in placeholder order) as ``generate(mm_encoder_outputs={"image": ...})``."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        BaseModelOutputWithDeepstackFeatures,
    )

    layers = len(features[0].deepstack) if features else 0
    # Per-image tuples, as Qwen3VLModel.get_image_features returns them (its annotations say
    # Tensor, the model consumes sequences).
    output: Any = BaseModelOutputWithDeepstackFeatures
    return output(
        pooler_output=tuple(f.embeds for f in features),
        deepstack_features=[tuple(f.deepstack[j] for f in features) for j in range(layers)],
    )
