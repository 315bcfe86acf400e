from __future__ import annotations

import pytest

from gateway.errors import RateLimited
from gateway.http import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=2, clock=clock)
    limiter.take(b"a")
    limiter.take(b"a")
    with pytest.raises(RateLimited) as info:
        limiter.take(b"a")
    assert info.value.status == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.headers["Retry-After"] == "10"  # one token every 10 s
    limiter.take(b"b")  # other clients have their own bucket
    clock.now += 10
    limiter.take(b"a")
    with pytest.raises(RateLimited):
        limiter.take(b"a")


def test_buckets_are_bounded() -> None:
    limiter = RateLimiter(per_minute=1, max_clients=3, clock=Clock())
    for i in range(100):
        limiter.take(f"client-{i}".encode())
    assert len(limiter._buckets) == 3
