"""Per-client request rate limiting: a token bucket per API key (or per peer address when the
server has no keys), checked after authentication and before admission.

Litestar's own rate-limit middleware keys on the spoofable ``X-Forwarded-For`` header and sends
no ``Retry-After``; this one keys on what the client proved (its key) or the socket peer, and
says when to retry. Buckets live in a bounded LRU map, so many clients cannot grow memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.errors import RateLimited
from gateway.http.auth import caller_of

__all__ = ("RateLimiter",)


class RateLimiter:
    """A Litestar guard allowing ``per_minute`` requests per client with bursts of ``burst``."""

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst or per_minute)
        self._clock = clock
        self._buckets: LRUCache[bytes, tuple[float, float]] = LRUCache(maxsize=max_clients)

    def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        self.take(self.client_key(connection))

    @staticmethod
    def client_key(connection: ASGIConnection[Any, Any, Any, Any]) -> bytes:
        """The authenticated key when the server has keys (``KeyGuard`` ran first), else the
        socket peer. Never a header the client chooses: not a forwarded address, and not an
        unconfigured bearer token (a fresh random token per request would get a fresh bucket)."""
        return caller_of(connection).rate_key.encode()

    def take(self, key: bytes) -> None:
        """Spend one token of ``key``'s bucket or raise ``RateLimited`` with ``Retry-After``."""
        # Guards run on the event loop only, so the (not thread-safe) LRU map needs no lock.
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise RateLimited(
                "Rate limit exceeded; retry after the delay in the Retry-After header.",
                headers={"Retry-After": str(wait)},
            )
        self._buckets[key] = (tokens - 1.0, now)
