"""Rate-limit buckets in Redis, so that replicas behind one load balancer share one limit.

Policy:

- The check-and-spend of all of a request's buckets is one Lua script, atomic in Redis: the
  same GCRA step as ``gateway.http.ratelimit.gcra``, timed by the Redis server's clock
  (``TIME``), so replicas whose clocks disagree still agree on every bucket.
- Every bucket is one string key, ``<prefix><bucket>``, that expires when the bucket would be
  full again (at most ``burst`` intervals later): an idle caller costs Redis nothing, and
  losing a key only ever refills a bucket. Keys name callers by key id or peer address, never
  by an API key.
- Redis unreachable (or erroring, or slower than ``timeout_s``): the gateway keeps serving and
  limits each replica on its own (an in-process ``MemoryStore`` with the same limits) until
  Redis answers again, retried every ``retry_s``; one warning is logged when that starts and
  one line when it ends. Why not refuse (503): a rate limiter is an abuse guard, not a safety
  interlock; turning a Redis outage into an outage of every replica is worse for an operator
  than limits that are looser by the replica count for a while, and the per-replica fallback
  still stops a single flood. Never a 500, and neither the URL nor its password reaches a
  client or the log (the log names the server as ``scheme://host:port`` only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.http.ratelimit import MemoryStore, Rate

__all__ = ("RedisStore", "redacted")

log = logging.getLogger("gateway.http.ratelimit")

# KEYS: the buckets. ARGV: each bucket's interval in milliseconds and its burst, in KEYS order.
# Returns 0 after spending one token from every bucket, else the milliseconds to wait (ceiled)
# without spending anything. Numbers are Lua doubles: a millisecond clock near 1.7e12 keeps
# sub-microsecond precision, and the stored value is written with 3 decimals.
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '') or now
  if tat < now then tat = now end
  tats[i] = tat + interval
  local w = tats[i] - burst * interval - now
  if w > wait then wait = w end
end
if wait > 0.001 then return math.ceil(wait) end
for i, key in ipairs(KEYS) do
  local ttl = math.max(1, math.ceil(tats[i] - now))
  redis.call('SET', key, string.format('%.3f', tats[i]), 'PX', ttl)
end
return 0
"""

DEFAULT_PREFIX = "vlm-gateway:ratelimit:"


def redacted(url: str) -> str:
    """``url`` without credentials, path or query: what a log line may say about the server."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return "unix socket"
        return f"{parts.scheme}://{parts.hostname or '?'}:{parts.port or 6379}"
    except ValueError:
        return "an unparsable URL"


class RedisStore:
    """``RateStore`` over Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``), keys
    under ``prefix``. Falls back to a per-process ``MemoryStore`` while Redis is unreachable."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = 0.5,
        retry_s: float = 5.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url:
            raise ValueError(
                "server.rate_limit_redis_url must be set when server.rate_limit_backend is redis"
            )
        self.target = redacted(url)
        try:
            # No retries inside redis-py: a failed call falls back at once, and Redis is tried
            # again after retry_s. The timeouts bound what one request waits for the limiter.
            self._client = Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError:
            # redis-py's message may quote the URL, password included.
            raise ValueError(
                "server.rate_limit_redis_url is not a redis://, rediss:// or unix:// URL"
            ) from None
        self._script = self._client.register_script(_SCRIPT)
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._clock = clock
        self.fallback = MemoryStore(max_keys=max_keys, clock=clock)
        self._down_until: float | None = None
        """While Redis is considered down: when to try it again."""

    @property
    def degraded(self) -> bool:
        """True while limits are per replica because Redis did not answer."""
        return self._down_until is not None

    async def spend(self, buckets: Sequence[tuple[str, Rate]]) -> float:
        if self._down_until is not None and self._clock() < self._down_until:
            return self.fallback.spend_now(buckets)
        keys = [self._prefix + key for key, _ in buckets]
        args: list[float | int] = []
        for _, rate in buckets:
            args += [rate.interval_s * 1000.0, rate.burst]
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                wait_ms = await self._script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            return self.fallback.spend_now(buckets)
        if self._down_until is not None:
            self._down_until = None
            log.info("rate limit store %s answers again; limits are shared again", self.target)
        return int(wait_ms) / 1000.0

    def _went_down(self, exc: BaseException) -> None:
        if self._down_until is None:
            # The exception's class only: redis-py's messages can carry connection details.
            log.warning(
                "rate limit store %s unreachable (%s); limiting each replica on its own "
                "until it answers (retried every %gs)",
                self.target,
                type(exc).__name__,
                self._retry_s,
            )
        self._down_until = self._clock() + self._retry_s

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # the server may be gone
            await self._client.aclose()
