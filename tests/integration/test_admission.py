"""Admission limits, cancellation while queued, and the request deadline, on a real server.

Two ``vlm-gateway serve`` processes with the tiny random model, started together:

- ``limited``: one generation slot and a queue of 8 (``max_concurrent=1``, ``max_queue=8``).
- ``hurried``: a 1-second request deadline.

The long generations use the prompt ``LONG``: with the tiny model (seed 0) greedy decoding falls
into a cycle without the end-of-turn token and runs to ``max_tokens`` (6000 tokens took 10 s on
2 cores), so a request with it holds the single slot for as long as a test needs and cannot
finish inside a 1-second deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful assistant."
LONG = "Write a long essay."
LONG_TOKENS = 8000
BURST = 50
QUEUE = 8
IDLE = {"queue_depth": 0.0, "in_flight_requests": 0.0}
ONE_RUNNING = {"queue_depth": 0.0, "in_flight_requests": 1.0}
ONE_QUEUED = {"queue_depth": 1.0, "in_flight_requests": 1.0}


@pytest.fixture(scope="module")
def servers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("admission")
    started = {
        "limited": Server(
            tiny_model_dir,
            logs / "limited.log",
            VLM_GATEWAY_SERVER__MAX_CONCURRENT="1",
            VLM_GATEWAY_SERVER__MAX_QUEUE=str(QUEUE),
            VLM_GATEWAY_SERVER__RETRY_AFTER_S="2",
        ),
        "hurried": Server(
            tiny_model_dir, logs / "hurried.log", VLM_GATEWAY_SERVER__REQUEST_TIMEOUT_S="1.0"
        ),
    }
    try:
        for srv in started.values():  # both load at the same time; wait for each
            srv.wait_ready()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def body(model: Path, text: str, max_tokens: int, *, stream: bool = False) -> dict[str, Any]:
    return {
        "model": str(model),
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    """``vlm_gateway_queue_depth`` and ``vlm_gateway_in_flight_requests`` from /metrics."""
    text = (await client.get("/metrics")).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("vlm_gateway_queue_depth", "vlm_gateway_in_flight_requests"):
            out[name.removeprefix("vlm_gateway_")] = float(value)
    return out


async def settle(
    client: httpx.AsyncClient, timeout_s: float, expected: dict[str, float]
) -> dict[str, float]:
    """Poll the gauges until they equal ``expected`` or ``timeout_s`` passed; the last values."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = await gauges(client)
        if current == expected or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.05)


async def test_burst_gets_only_200_and_503_with_retry_after(
    servers: dict[str, Server], tiny_model_dir: Path
) -> None:
    srv = servers["limited"]
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=120, limits=limits) as client:
        prompts = [f"Request {i}: say something." for i in range(BURST)]
        responses = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=body(tiny_model_dir, p, 32))
                for p in prompts
            )
        )
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        # One generating plus QUEUE waiting are admitted before any can finish; the burst
        # arrives far faster than 9 generations of 32 tokens.
        assert statuses.count(200) >= 1 + QUEUE
        assert statuses.count(503) >= 1
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "2"
                assert r.json()["error"]["code"] == "server_overloaded"
                assert r.json()["error"]["type"] == "server_error"
                continue
            completion = r.json()
            assert completion["object"] == "chat.completion"
            choice = completion["choices"][0]
            assert isinstance(choice["message"]["content"], str)
            assert choice["finish_reason"] in ("stop", "length")
            assert 1 <= completion["usage"]["completion_tokens"] <= 32
        assert await settle(client, 5, IDLE) == IDLE


async def test_request_cancelled_while_queued_frees_its_place(
    servers: dict[str, Server], tiny_model_dir: Path
) -> None:
    srv = servers["limited"]
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=60) as client:
        assert await settle(client, 5, IDLE) == IDLE
        req = body(tiny_model_dir, LONG, LONG_TOKENS, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=req) as holder:
            assert holder.status_code == 200
            lines = holder.aiter_lines()
            async for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    break  # generating: the only slot is taken
            waiting = asyncio.create_task(
                client.post("/v1/chat/completions", json=body(tiny_model_dir, "Hi.", 8))
            )
            assert await settle(client, 5, ONE_QUEUED) == ONE_QUEUED
            waiting.cancel()  # the client goes away while its request is queued
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # Its place is returned while the first request still holds the slot.
            assert await settle(client, 3, ONE_RUNNING) == ONE_RUNNING
            assert "data: [DONE]" not in await anext(lines)
        # Closing the stream cancels the generation and frees the slot.
        assert await settle(client, 5, IDLE) == IDLE
        after = await client.post("/v1/chat/completions", json=body(tiny_model_dir, "Hi.", 4))
        assert after.status_code == 200


async def test_deadline_gives_504_timeout(servers: dict[str, Server], tiny_model_dir: Path) -> None:
    srv = servers["hurried"]
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as client:
        start = time.monotonic()
        r = await client.post("/v1/chat/completions", json=body(tiny_model_dir, LONG, LONG_TOKENS))
        elapsed = time.monotonic() - start
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "timeout"
        assert r.json()["error"]["type"] == "server_error"
        assert elapsed < 5  # the deadline stopped the generation, it did not run to the end

        # Streaming: the deadline strikes after the stream started, so it is one in-band frame.
        req = body(tiny_model_dir, LONG, LONG_TOKENS, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=req) as stream:
            assert stream.status_code == 200
            frames = [line async for line in stream.aiter_lines() if line.startswith("data:")]
        assert '"code":"timeout"' in frames[-1].replace(" ", ""), (len(frames), frames[-3:])
        assert await settle(client, 5, IDLE) == IDLE


def test_cancelled_stream_frees_the_generation_slot(
    servers: dict[str, Server], tiny_model_dir: Path
) -> None:
    """One generation slot: a follow-up request completes promptly only if the disconnected
    stream's generation stopped."""
    server = servers["limited"]
    body = {
        "model": str(tiny_model_dir),
        # Greedy on the tiny model, this prompt runs to max_tokens (about 30 s) unless cancelled.
        "messages": [{"role": "user", "content": "Write a long essay."}],
        "max_tokens": 20000,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(5):
                next(lines)
        # Leaving the block closed the connection mid-stream.
        started = time.monotonic()
        quick = client.post(
            f"{server.base_url}/v1/chat/completions",
            json={**body, "max_tokens": 2, "stream": False},
        )
        waited = time.monotonic() - started
    assert quick.status_code == 200
    # 20000 tokens would take minutes; a freed slot answers in well under that.
    assert waited < 15, f"follow-up waited {waited:.1f}s: the cancelled generation kept running"
