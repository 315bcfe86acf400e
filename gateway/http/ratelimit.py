"""Request rate limiting: a limit per caller and an optional global one, checked after
authentication and before admission.

Policy:

- Who a caller is: the configured API key that authenticated it (by its stable id, so every
  spelling of one key, ``bearer KEY`` or ``Bearer  KEY``, is one caller) when the server has
  keys; otherwise the socket peer address. Never a header the client chooses: not
  ``X-Forwarded-For`` (Litestar's own rate-limit middleware keys on it, and sends no
  ``Retry-After``), not an unconfigured bearer token (a fresh one per request would get a fresh
  bucket).
- Each limit is a GCRA (the generic cell rate algorithm), which is a token bucket of ``burst``
  tokens refilled at ``per_minute`` / 60 a second, kept as one number per bucket: the
  theoretical arrival time. A request spends one token of its caller's bucket and one of the
  global bucket, or of neither: a request refused by one limit does not spend from the other.
- Excess gets 429 ``rate_limit_exceeded`` with ``Retry-After``: the whole seconds until the
  limit that refused it would admit it.
- Where buckets live is a ``RateStore``: ``MemoryStore`` (the default; one process) or
  ``gateway.http.ratelimit_redis.RedisStore`` (replicas behind one load balancer share the
  limits; the check-and-spend is one Lua script, atomic in Redis).
- Safe under concurrency: the guard is a coroutine on the event loop, and the memory store's
  check-and-spend holds a lock, so concurrent requests never spend more than the limit allows.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import LRUCache
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.errors import RateLimited
from gateway.http.auth import caller_of

if TYPE_CHECKING:
    from gateway.settings import ServerSettings

__all__ = (
    "GLOBAL_KEY",
    "MemoryStore",
    "Rate",
    "RateLimiter",
    "RateStore",
    "build_rate_limiter",
    "gcra",
)

GLOBAL_KEY = "global"
"""The bucket every request spends from when a global limit is set (caller keys are
``key:<id>`` or ``peer:<address>``, so it cannot collide with one)."""

# Float arithmetic on arrival times may leave a nanosecond of "wait" where the exact answer is 0.
_EPSILON_S = 1e-6


@dataclass(frozen=True)
class Rate:
    """``per_minute`` requests a minute, ``burst`` of them at once."""

    per_minute: int
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst <= 0:
            raise ValueError("a rate needs per_minute > 0 and burst > 0")

    @property
    def interval_s(self) -> float:
        """Seconds one token takes to come back."""
        return 60.0 / self.per_minute


def gcra(tat: float | None, now: float, rate: Rate) -> tuple[float, float]:
    """One GCRA step: ``(wait, new_tat)``. ``tat`` is the bucket's theoretical arrival time
    (None: a full bucket). ``wait`` > 0 refuses the request for that many seconds; otherwise
    ``new_tat`` is the bucket after spending one token. Equivalent to a token bucket holding
    ``burst - (tat - now) / interval`` tokens. ``ratelimit_redis`` runs the same step in Lua."""
    start = now if tat is None or tat < now else tat
    new_tat = start + rate.interval_s
    return new_tat - rate.burst * rate.interval_s - now, new_tat


class RateStore(Protocol):
    """Where buckets live. ``spend`` takes one token from every bucket or from none."""

    async def spend(self, buckets: Sequence[tuple[str, Rate]]) -> float:
        """Spend from each ``(key, rate)`` bucket and return 0, or return the seconds to wait
        (the longest of the refusing buckets) and spend nothing."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


class MemoryStore:
    """Buckets in this process, in a bounded LRU map (many clients cannot grow memory; an
    evicted bucket comes back full). The global bucket is spent by every request, so it is
    always among the most recently used and is never the one evicted."""

    def __init__(
        self, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._tats: LRUCache[str, float] = LRUCache(maxsize=max(2, max_keys))
        # The LRU map is not thread-safe, and the check-and-spend must be one step even when a
        # caller off the event loop (a test, a sync wrapper) spends at the same time.
        self._lock = threading.Lock()

    async def spend(self, buckets: Sequence[tuple[str, Rate]]) -> float:
        return self.spend_now(buckets)

    def spend_now(self, buckets: Sequence[tuple[str, Rate]]) -> float:
        """``spend`` without the coroutine: nothing here waits."""
        with self._lock:
            now = self._clock()
            wait, updates = 0.0, []
            for key, rate in buckets:
                key_wait, new_tat = gcra(self._tats.get(key), now, rate)
                wait = max(wait, key_wait)
                updates.append((key, new_tat))
            if wait > _EPSILON_S:
                return wait
            for key, new_tat in updates:
                self._tats[key] = new_tat
            return 0.0

    def __len__(self) -> int:
        return len(self._tats)

    async def aclose(self) -> None:
        return None


class RateLimiter:
    """A Litestar guard allowing ``per_minute`` requests per caller with bursts of ``burst``
    (one minute's worth when unset), and ``global_per_minute`` requests from everyone together
    with bursts of ``global_burst``. A ``per_minute`` or ``global_per_minute`` of 0 turns that
    limit off."""

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        *,
        global_per_minute: int = 0,
        global_burst: int | None = None,
        store: RateStore | None = None,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_caller = Rate(per_minute, burst or per_minute) if per_minute > 0 else None
        self.global_rate = (
            Rate(global_per_minute, global_burst or global_per_minute)
            if global_per_minute > 0
            else None
        )
        self.store: RateStore = (
            store if store is not None else MemoryStore(max_keys=max_clients + 1, clock=clock)
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> RateLimiter:
        # Litestar deep-copies a Router, guards included, when it registers one: the copy must
        # be this limiter (one set of buckets, the connections the app's lifespan closes).
        return self

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        # A coroutine: Litestar runs a plain function guard in its thread pool, where the old
        # unlocked map raced; on the loop the memory check-and-spend never yields.
        await self.take(self.client_key(connection))

    @staticmethod
    def client_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """The authenticated key when the server has keys (``KeyGuard`` ran first), else the
        socket peer. Never a header the client chooses."""
        return caller_of(connection).rate_key

    async def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket and of the global one, or raise ``RateLimited``
        with ``Retry-After`` (whole seconds, at least 1)."""
        buckets: list[tuple[str, Rate]] = []
        if self.per_caller is not None:
            buckets.append((f"caller:{key}", self.per_caller))
        if self.global_rate is not None:
            buckets.append((GLOBAL_KEY, self.global_rate))
        wait = await self.store.spend(buckets) if buckets else 0.0
        if wait > 0:
            raise RateLimited(
                "Rate limit exceeded; retry after the delay in the Retry-After header.",
                headers={"Retry-After": str(max(1, math.ceil(wait - _EPSILON_S)))},
            )

    async def aclose(self) -> None:
        await self.store.aclose()


def build_rate_limiter(server: ServerSettings) -> RateLimiter | None:
    """The limiter ``server`` configures, or None when both limits are off."""
    if server.rate_limit_per_minute <= 0 and server.rate_limit_global_per_minute <= 0:
        return None
    store: RateStore | None = None
    if server.rate_limit_backend == "redis":
        # Imported here: that module builds on this one's types.
        from gateway.http.ratelimit_redis import RedisStore

        store = RedisStore(server.rate_limit_redis_url, prefix=server.rate_limit_redis_prefix)
    return RateLimiter(
        server.rate_limit_per_minute,
        server.rate_limit_burst or None,
        global_per_minute=server.rate_limit_global_per_minute,
        global_burst=server.rate_limit_global_burst or None,
        store=store,
    )
