"""The rate limiter: GCRA arithmetic and Retry-After, who a caller is (never a header the
client chooses), the global limit, concurrency, and serving on when Redis is unreachable."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import secrets
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from gateway.errors import RateLimited
from gateway.http import RateLimiter
from gateway.http.ratelimit import MemoryStore, Rate, build_rate_limiter
from gateway.http.ratelimit_redis import RedisStore, redacted
from gateway.settings import ServerSettings, SettingsError, load_settings
from tests.api.conftest import MODEL, build_app, running


def free_port() -> int:
    """A loopback port nothing listens on (for "Redis is unreachable")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def retry_after(limiter: RateLimiter, key: str) -> str:
    with pytest.raises(RateLimited) as info:
        await limiter.take(key)
    assert info.value.status == 429
    assert info.value.code == "rate_limit_exceeded"
    return info.value.headers["Retry-After"]


# -- the guard itself ------------------------------------------------------------------------


async def test_burst_then_rate_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=2, clock=clock)
    await limiter.take("a")
    await limiter.take("a")
    assert await retry_after(limiter, "a") == "10"  # one token every 10 s
    await limiter.take("b")  # other callers have their own bucket
    clock.now += 4
    assert await retry_after(limiter, "a") == "6"  # what is left of the 10 s, not 10 again
    clock.now += 6
    await limiter.take("a")
    assert await retry_after(limiter, "a") == "10"


async def test_a_fraction_of_a_second_is_one_second() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=600, burst=1, clock=clock)  # a token every 0.1 s
    await limiter.take("a")
    assert await retry_after(limiter, "a") == "1"


async def test_buckets_are_bounded() -> None:
    store = MemoryStore(max_keys=3, clock=Clock())
    limiter = RateLimiter(per_minute=1, store=store)
    for i in range(100):
        await limiter.take(f"client-{i}")
    assert len(store) == 3


async def test_global_limit_across_callers_and_a_refusal_spends_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=1, global_per_minute=3, clock=clock)
    await limiter.take("a")
    # "a" is over its own limit: that refusal must not spend a global token as well.
    assert await retry_after(limiter, "a") == "60"
    await limiter.take("b")
    await limiter.take("c")
    assert await retry_after(limiter, "d") == "20"  # the global bucket: 3 a minute
    clock.now += 20
    await limiter.take("d")


async def test_global_limit_alone() -> None:
    limiter = RateLimiter(per_minute=0, global_per_minute=2, global_burst=1, clock=Clock())
    assert limiter.per_caller is None
    await limiter.take("a")
    assert await retry_after(limiter, "b") == "30"


def test_memory_store_is_thread_safe() -> None:
    """Many threads spending at once never take more than the burst (a frozen clock: no
    refill). The old limiter's unlocked map admitted more under this load in most runs."""
    store = MemoryStore(clock=lambda: 100.0)
    rate = Rate(per_minute=1, burst=4000)
    admitted = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        admitted.append(sum(store.spend_now([("k", rate)]) == 0 for _ in range(2000)))

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert sum(admitted) == 4000


def test_the_guard_is_a_coroutine() -> None:
    """Litestar runs a plain-function guard in its thread pool, where buckets race."""
    assert inspect.iscoroutinefunction(RateLimiter(per_minute=1).__call__)


# -- through the app -------------------------------------------------------------------------


@asynccontextmanager
async def app_with(**server: Any) -> AsyncIterator[Any]:
    app = build_app(FakeAdapter(Capabilities(model_id=MODEL)), server=server)
    async with running(app):
        yield app


def client(app: Any, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(peer, 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


@asynccontextmanager
async def two_peers(**server: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Clients of one app from two socket peers, 127.0.0.1 and 127.0.0.2."""
    async with app_with(**server) as app, client(app) as one, client(app, "127.0.0.2") as two:
        yield one, two


async def models(http: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await http.get("/v1/models", headers=headers)


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response.headers["Retry-After"]) >= 1


async def test_without_keys_the_peer_is_the_caller_whatever_the_headers() -> None:
    async with two_peers(rate_limit_per_minute=3) as (one, two):
        for _ in range(3):  # a fresh bearer token and forwarded address every time
            headers = {
                "Authorization": f"Bearer {secrets.token_hex(8)}",
                "X-Forwarded-For": f"10.0.0.{secrets.randbelow(250)}",
                "X-Real-IP": f"10.1.0.{secrets.randbelow(250)}",
            }
            assert (await one.get("/v1/models", headers=headers)).status_code == 200
        assert_limited(await models(one, authorization=f"Bearer {secrets.token_hex(8)}"))
        # Claiming the other peer's address in a header neither spends from nor joins it.
        assert (await models(two, **{"X-Forwarded-For": "127.0.0.1"})).status_code == 200


async def test_with_keys_every_spelling_of_one_key_is_one_caller() -> None:
    async with two_peers(rate_limit_per_minute=3, api_keys=("sk-one", "sk-two")) as pair:
        one, elsewhere = pair
        for spelling in ("bearer sk-one", "Bearer  sk-one", "Bearer sk-one "):
            assert (await models(one, authorization=spelling)).status_code == 200
        assert_limited(await models(one, authorization="Bearer sk-one"))
        # The key is the caller, not the address: another peer with it is limited too ...
        assert_limited(await models(elsewhere, authorization="BEARER sk-one"))
        # ... and another key from the same peer has its own bucket.
        assert (await models(one, authorization="Bearer sk-two")).status_code == 200


async def test_global_limit_through_the_app() -> None:
    async with two_peers(rate_limit_per_minute=100, rate_limit_global_per_minute=2) as pair:
        one, two = pair
        assert (await models(one)).status_code == 200
        assert (await models(two)).status_code == 200
        limited = await models(two)
        assert_limited(limited)
        assert limited.headers["Retry-After"] == "30"


async def test_concurrent_requests_never_exceed_the_limit() -> None:
    async with app_with(rate_limit_per_minute=10) as app, client(app) as http:
        responses = await asyncio.gather(*(models(http) for _ in range(60)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 50
    for response in responses:
        if response.status_code == 429:
            assert_limited(response)


# -- settings and Redis unreachable ----------------------------------------------------------


def test_settings_choose_the_backend() -> None:
    env = {
        "VLM_GATEWAY_SERVER__RATE_LIMIT_BACKEND": "redis",
        "VLM_GATEWAY_SERVER__RATE_LIMIT_REDIS_URL": "redis://127.0.0.1:6390/2",
        "VLM_GATEWAY_SERVER__RATE_LIMIT_GLOBAL_PER_MINUTE": "100",
    }
    server = load_settings(environ=env).server
    assert (server.rate_limit_backend, server.rate_limit_global_per_minute) == ("redis", 100)
    with pytest.raises(SettingsError, match="rate_limit_backend"):
        load_settings(environ={"VLM_GATEWAY_SERVER__RATE_LIMIT_BACKEND": "memcached"})
    assert build_rate_limiter(ServerSettings()) is None  # both limits off by default
    with pytest.raises(ValueError, match="rate_limit_redis_url must be set"):
        build_rate_limiter(
            dataclasses.replace(server, rate_limit_redis_url="", rate_limit_per_minute=1)
        )


def test_redacted_drops_credentials() -> None:
    assert redacted("redis://user:s3cret@cache.internal:6380/1") == "redis://cache.internal:6380"
    assert redacted("rediss://:s3cret@cache") == "rediss://cache:6379"
    assert redacted("unix:///run/redis.sock?password=s3cret") == "unix socket"


async def test_redis_unreachable_serves_on_limited_per_replica(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail open to the in-process limiter: never a 500, never the URL or its password."""
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    server = {
        "rate_limit_per_minute": 2,
        "rate_limit_backend": "redis",
        "rate_limit_redis_url": url,
    }
    caplog.set_level(logging.INFO, logger="gateway")
    async with app_with(**server) as app, client(app) as http:
        responses = [await models(http) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert_limited(responses[2])
    for response in responses:
        assert "s3cret" not in response.text
        assert url.rsplit(":", 1)[1] not in response.text
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per outage, not once per request
    assert "s3cret" not in caplog.text


async def test_redis_store_tries_again_after_retry_s() -> None:
    clock = Clock()
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", retry_s=5.0, clock=clock)
    rate = Rate(per_minute=60, burst=5)
    try:
        assert await store.spend([("k", rate)]) == 0
        assert store.degraded
        down_until = store._down_until
        clock.now += 1
        assert await store.spend([("k", rate)]) == 0  # the fallback; Redis not tried
        assert store._down_until == down_until
        clock.now += 5
        assert await store.spend([("k", rate)]) == 0  # tried (and failed) again
        assert store._down_until == clock.now + 5
    finally:
        await store.aclose()
