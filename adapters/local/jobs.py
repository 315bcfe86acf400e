"""What the model's worker thread runs: jobs, the channel each reports through, and the token
budget that bounds one scheduling step (``adapters.local.worker`` runs them).

A job's ``run`` either does its work at once or returns ``Pieces``: a generator that does the work
a piece at a time, each piece sized to the step's ``StepBudget``, so that long work (a vision
encoding, a long prefill) is spread over many steps and the running streams get a token at each.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from adapters.base import AdapterError

__all__ = (
    "Channel",
    "EngineObserver",
    "Failure",
    "FairQueue",
    "Job",
    "NoObserver",
    "Pieces",
    "StepBudget",
    "StepPacer",
    "Stepper",
    "WorkerClosed",
)

T = TypeVar("T")

Pieces = Generator[None, None, Any]
"""Work done a piece at a time: each ``next()`` runs one piece, taking its size from the step's
``StepBudget``; the generator's return value is the work's result."""


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
    """A unit of model work. ``run`` executes on the worker thread and reports via ``channel``;
    it may return ``Pieces`` to be resumed at later steps."""

    run: Callable[[Job], Pieces | None]
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
    positions: tuple[int, int] = (0, 0)
    """Key/value positions a slot job needs: its prompt's and, at most, its completion's (the
    batch admits it only when they fit in its memory budget)."""
    owner: str = ""
    """Who asked (the cache scope: an API key's partition), for a fair share of the batch."""
    waited: bool = False
    """The batch had no memory for it at some step (counted once)."""

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.submitted


class StepBudget:
    """Tokens of model work one scheduling step may still spend (decode tokens first, then
    prefill chunks, then vision-encoder pieces). A piece asks with ``take`` and always gets at
    least its minimum, so work progresses even when a piece is larger than the whole budget."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.left = tokens
        self.spent: dict[str, int] = {}
        """Tokens spent this step per kind of work (``decode``, ``prefill``, ``encode``)."""

    @property
    def exhausted(self) -> bool:
        return self.left <= 0

    def take(self, kind: str, want: int, minimum: int = 1) -> int:
        """Grant up to ``want`` tokens (never fewer than ``min(want, minimum)``) and spend them."""
        granted = min(want, max(self.left, minimum))
        self.spend(kind, granted)
        return granted

    def spend(self, kind: str, tokens: int) -> None:
        self.left -= tokens
        self.spent[kind] = self.spent.get(kind, 0) + tokens


class StepPacer:
    """Sizes each step's budget so that a step takes about ``seconds`` (``step_seconds``): the
    tokens of prefill and encoder work one second holds on this machine (measured each step,
    smoothed) times the target, between ``MIN_STEP_TOKENS`` and ``ceiling`` (``step_tokens``).
    A step is as long as running streams wait for their next token, and the same token budget
    takes 0.2 s on one CPU and 4 s on another. ``seconds`` 0: always ``ceiling``; so too while
    no stream waits (small chunks would only add a pass over the weights per chunk: a lone
    one-image request on the AVX2 EPYC took 46 s paced against 39 s unpaced)."""

    MIN_STEP_TOKENS = 32
    _SMOOTHING = 0.3

    def __init__(self, ceiling: int, seconds: float) -> None:
        self.ceiling = ceiling
        self.seconds = seconds
        self.rate: float | None = None
        """Prefill/encoder tokens per second of step time (None until measured)."""

    def budget(self, streaming: bool = True) -> StepBudget:
        """``streaming``: some sequence waits for its next token at the end of the step."""
        if self.seconds <= 0 or self.rate is None or not streaming:
            return StepBudget(self.ceiling)
        tokens = int(self.rate * self.seconds)
        return StepBudget(max(min(self.MIN_STEP_TOKENS, self.ceiling), min(self.ceiling, tokens)))

    def observe(self, budget: StepBudget, seconds: float) -> None:
        """A step spent ``budget`` in ``seconds`` (its decode time included: the estimate errs
        on the short side)."""
        work = sum(tokens for kind, tokens in budget.spent.items() if kind != "decode")
        if work < 8 or seconds <= 0:
            return  # too little to time
        rate = work / seconds
        self.rate = rate if self.rate is None else self.rate + self._SMOOTHING * (rate - self.rate)


class Stepper(Protocol):
    """Jobs that run together, a step at a time (``adapters.local.batching``). A slot job's
    ``run`` joins it; it ends when ``step`` or ``abort`` returns it, having sent its last item."""

    def __len__(self) -> int: ...

    def __contains__(self, job: object) -> bool: ...

    @property
    def streaming(self) -> bool:
        """Whether a sequence waits for its next token (the step is then paced for it)."""
        ...

    def admits(self, job: Job) -> bool:
        """Whether ``job`` may start now (a free place and memory for its ``positions``)."""
        ...

    def step(self, budget: StepBudget) -> list[Job]:
        """Advance every held job by one step within ``budget``; the jobs that ended."""
        ...

    def abort(self, error: BaseException) -> list[Job]:
        """End every held job with ``error``; the jobs that ended."""
        ...


class EngineObserver(Protocol):
    """Told what the engine does (metrics); every method is called on the worker thread."""

    def step(self, spent: dict[str, int], seconds: float) -> None:
        """A step that did work: tokens spent per kind of work, and its wall seconds."""
        ...

    def memory(self, in_use: int, budget: int) -> None:
        """Key/value bytes held by live sequences after a step, and the budget (0: none)."""
        ...

    def memory_wait(self) -> None:
        """A generation had to wait for key/value memory before it could start."""
        ...

    def token_gap(self, seconds: float) -> None:
        """Seconds between two tokens of one sequence."""
        ...


class NoObserver:
    def step(self, spent: dict[str, int], seconds: float) -> None:
        pass

    def memory(self, in_use: int, budget: int) -> None:
        pass

    def memory_wait(self) -> None:
        pass

    def token_gap(self, seconds: float) -> None:
        pass


class FairQueue:
    """Slot jobs waiting for the batch, taken in a fair order.

    ``next()`` is the oldest job of the owner with the fewest jobs inside the batch, and among
    owners with as many, of the one served least recently (round robin), so one owner's many
    requests cannot keep the others waiting; a job that has waited longer than ``fair_wait_s``
    goes first whatever its owner, so nobody waits forever.
    """

    def __init__(self, fair_wait_s: float) -> None:
        self.fair_wait_s = fair_wait_s
        self._held: list[Job] = []
        self._inside: collections.Counter[str] = collections.Counter()
        self._owners: dict[Job, str] = {}
        self._served: dict[str, int] = {}
        """Owner -> admission number of its last job admitted."""
        self._admitted = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, job: Job) -> None:
        self._held.append(job)

    def next(self) -> Job:
        oldest = self._held[0]
        if time.perf_counter() - oldest.submitted > self.fair_wait_s:
            return oldest
        # min() keeps the first of equals: the oldest job of the chosen owner.
        return min(
            self._held, key=lambda job: (self._inside[job.owner], self._served.get(job.owner, -1))
        )

    def remove(self, job: Job) -> None:
        self._held.remove(job)

    def entered(self, job: Job) -> None:
        """``job`` (removed from the queue) is inside the batch now."""
        self._inside[job.owner] += 1
        self._owners[job] = job.owner
        self._admitted += 1
        self._served[job.owner] = self._admitted

    def left(self, job: Job) -> None:
        owner = self._owners.pop(job, None)
        if owner is not None:
            self._inside[owner] -= 1
            if not self._inside[owner]:
                del self._inside[owner]
            if not any(j.owner == owner for j in self._held) and owner not in self._inside:
                self._served.pop(owner, None)  # bounded by the owners present

    def drain(self) -> list[Job]:
        """Every waiting job, removed."""
        jobs, self._held = self._held, []
        return jobs
