"""Replicas share one rate limit through Redis, and keep serving when Redis goes away.

A real ``redis-server`` (Debian's; ``make test`` installs it when missing) on a free loopback
port with a password and no persistence, and two ``vlm-gateway serve`` processes with the tiny
random model, both limiting through it: 6 requests a minute with a burst of 6 per caller. The
requests are ``GET /v1/models`` (rate limited like chat, and cheap); both servers see the same
caller (peer 127.0.0.1, no keys).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import Server, free_port

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-rl"
LIMIT = 6
PREFIX = "vlm-gateway:ratelimit:"


class RedisServer:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(
                "redis-server is not installed: `make test` installs Debian's (apt-get install "
                "redis-server); these tests need a real Redis"
            )
        self.port = free_port()
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self._log = (directory / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(directory), "--requirepass", PASSWORD,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port, password=PASSWORD, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replicas(
    store: RedisServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    logs = tmp_path_factory.mktemp("replicas")
    env = {
        "VLM_GATEWAY_SERVER__RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "VLM_GATEWAY_SERVER__RATE_LIMIT_BURST": str(LIMIT),
        "VLM_GATEWAY_SERVER__RATE_LIMIT_BACKEND": "redis",
        "VLM_GATEWAY_SERVER__RATE_LIMIT_REDIS_URL": store.url,
    }
    started = [Server(tiny_model_dir, logs / f"replica-{i}.log", **env) for i in range(2)]
    try:
        for server in started:  # both load at the same time; wait for each
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def models(server: Server) -> httpx.Response:
    return httpx.get(f"{server.base_url}/v1/models", timeout=10)


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 60 // LIMIT


def test_the_limit_holds_across_two_gateway_processes(
    store: RedisServer, replicas: list[Server]
) -> None:
    first, second = replicas
    for i in range(LIMIT):  # split over both: 3 each
        response = models(replicas[i % 2])
        assert response.status_code == 200, response.text
    # Each replica alone has served only 3 of the 6 allowed, yet both refuse the 7th.
    assert_limited(models(first))
    assert_limited(models(second))
    # Redis holds one key per active bucket, under the prefix, expiring on its own.
    keys = store.client.keys(PREFIX + "*")
    assert keys == [f"{PREFIX}caller:peer:127.0.0.1".encode()]
    assert 0 < store.client.pttl(keys[0]) <= 60_000


def test_redis_down_serves_on_with_per_replica_limits(
    store: RedisServer, replicas: list[Server]
) -> None:
    """Runs last in this module: it stops Redis. Fail open to each replica's own limiter: no
    500, no URL or password in a response or the log, one warning per outage."""
    first, _ = replicas
    store.stop()
    responses = [models(first) for _ in range(LIMIT + 1)]
    assert [r.status_code for r in responses] == [200] * LIMIT + [429]
    assert_limited(responses[-1])
    for response in responses:
        assert PASSWORD not in response.text
        assert str(store.port) not in response.text
    log = first.log()
    assert log.count("rate limit store") == 1, log
    assert "unreachable" in log
    assert PASSWORD not in log
