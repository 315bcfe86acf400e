"""Connection limits of the real server: a client dripping its headers is cut off, and a
liveness probe stays fast while a burst of requests arrives."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hurried(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tiny_model_dir,
        tmp_path_factory.mktemp("connections") / "server.log",
        VLM_GATEWAY_SERVER__HEADER_TIMEOUT_S="1.5",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def drip(port: int, seconds: float) -> tuple[float, bool]:
    """Send a request's headers one byte every 0.2 s; (seconds until the server closed the
    connection, whether it did within ``seconds``)."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.2)
                if sock.recv(1) == b"":
                    return time.monotonic() - started, True
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, True
            if time.monotonic() - started > seconds:
                break
    return time.monotonic() - started, False


def test_slow_headers_are_cut_off_and_others_are_served(hurried: Server) -> None:
    elapsed, closed = drip(hurried.port, seconds=10)
    assert closed, "the server kept a header-dripping connection open"
    assert elapsed < 5
    # A normal client is unaffected, also on a kept-alive connection after an idle pause.
    with httpx.Client(base_url=hurried.base_url, timeout=10) as client:
        assert client.get("/health").status_code == 200
        time.sleep(1.0)
        assert client.get("/health").status_code == 200


POLLER = """
import json, sys, time, httpx
lat = []
with httpx.Client(base_url=sys.argv[1], timeout=10) as client:
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        t = time.perf_counter()
        assert client.get("/health").status_code == 200
        lat.append(time.perf_counter() - t)
        time.sleep(0.01)
print(json.dumps(sorted(lat)))
"""


async def test_health_stays_fast_during_a_burst(server: Server, tiny_model_dir: Path) -> None:
    """A liveness probe must not time out because the server is busy: /health is polled from
    another process (so this test's own event loop does not delay it) while 100 chat requests,
    half with an image, arrive at once."""
    poller = await asyncio.create_subprocess_exec(
        sys.executable, "-c", POLLER, server.base_url, "8", stdout=asyncio.subprocess.PIPE
    )
    image = data_url(make_image(640, 480))
    limits = httpx.Limits(max_connections=128)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:

        async def ask(i: int) -> int:
            content: list[dict[str, Any]] = [{"type": "text", "text": f"Question {i}"}]
            if i % 2:
                content.append({"type": "image_url", "image_url": {"url": image}})
            body = {"model": str(tiny_model_dir), "max_tokens": 8, "messages": [
                {"role": "user", "content": content}
            ]}  # fmt: skip
            return (await client.post("/v1/chat/completions", json=body)).status_code

        await asyncio.sleep(1.0)  # the poller is up
        codes = await asyncio.gather(*(ask(i) for i in range(100)))
    out, _ = await poller.communicate()
    latencies = json.loads(out)
    assert set(codes) <= {200, 503}  # admitted ones answer, the rest are refused at once
    assert codes.count(200) >= 8
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < 0.1, f"/health p99 {p99 * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms"
