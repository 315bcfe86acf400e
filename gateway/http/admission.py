"""Admission control: bounded in-flight generations plus a bounded queue.

A request is admitted (or refused at once with 503 ``server_overloaded`` and ``Retry-After``)
before any work is done for it. An admitted request then waits for one of ``max_concurrent``
generation slots. Whatever happens (success, error, client disconnect while queued or while
generating), ``Ticket.release`` returns both places exactly once.
"""

from __future__ import annotations

import asyncio
import time

from gateway.errors import ServerOverloaded
from gateway.observability import metrics

__all__ = ("Admission", "Ticket")


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int, retry_after_s: int = 1) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self.admitted = 0
        """Requests admitted and not yet released (queued plus running)."""
        self.running = 0
        """Requests holding a generation slot."""

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def admit(self) -> Ticket:
        """Take a place, or raise ``ServerOverloaded`` when all slots and the queue are full."""
        if self.admitted >= self.max_concurrent + self.max_queue:
            raise ServerOverloaded(
                "The server is at capacity; retry after the delay in the Retry-After header.",
                retry_after=self.retry_after_s,
            )
        self.admitted += 1
        self._publish()
        return Ticket(self)

    def _publish(self) -> None:
        metrics.set_load(in_flight=self.running, queued=self.queued)


class Ticket:
    """One admitted request's claim on the queue and, later, on a generation slot."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._has_slot = False
        self._released = False
        self._admitted_at = time.perf_counter()
        self.waited_s = 0.0
        """Seconds between admission and getting a generation slot."""

    async def acquire_slot(self) -> None:
        """Wait for a generation slot (cancellation while waiting leaves nothing held)."""
        if self._has_slot or self._released:
            return
        await self._admission._slots.acquire()
        self._has_slot = True
        self.waited_s = time.perf_counter() - self._admitted_at
        self._admission.running += 1
        self._admission._publish()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._has_slot:
            self._has_slot = False
            self._admission.running -= 1
            self._admission._slots.release()
        self._admission.admitted -= 1
        self._admission._publish()
