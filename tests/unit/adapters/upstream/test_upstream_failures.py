"""UpstreamAdapter failures against an emulated OpenAI SSE server (httpx.MockTransport): broken
streams, refusals, network failures, timeouts, early close."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from adapters.base import Delta, PromptTooLong, StreamEvent, collect
from adapters.upstream import UpstreamRejected, UpstreamUnavailable
from tests.unit.adapters.upstream.upstream_fake import (
    BASE,
    DONE,
    SECRET,
    Part,
    Upstream,
    ask,
    content,
    drain,
    frame,
    make,
)


@pytest.mark.parametrize(
    "parts",
    [
        [content("partial")],  # connection ended before any finish_reason
        [content("a"), frame({"error": {"message": SECRET, "code": 500}})],
        [content("a"), frame({"object": "error", "message": SECRET})],
        [content("a"), content("", "abort"), DONE],
        [content("a"), b"data: {not json\n\n"],
        [content("a"), b"data: " + b"[" * 100_000 + b"\n\n"],
        [content("a"), b"data: " + b"x" * (1 << 22) + b"\n\n"],
        [content("a"), httpx.ReadError(SECRET)],
        [content("a"), httpx.RemoteProtocolError(SECRET)],
    ],
    ids=[
        "truncated",
        "error-frame",
        "vllm-error",
        "abort",
        "malformed",
        "nested",
        "oversized",
        "read",
        "protocol",
    ],
)
async def test_broken_streams_are_unavailable_after_the_text_so_far(
    upstream: Upstream, parts: list[Part]
) -> None:
    upstream.chat = lambda _: upstream.sse(parts)
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamUnavailable) as info:
        await drain(make(upstream).stream(ask()), received)
    assert received == [Delta("partial" if len(parts) == 1 else "a")]
    assert "10.9.8.7" not in str(info.value)
    assert "/srv" not in str(info.value)
    assert upstream.bodies[0].closed


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, SECRET, UpstreamUnavailable),
        (503, SECRET, UpstreamUnavailable),
        (401, SECRET, UpstreamUnavailable),
        (400, json.dumps({"error": {"message": SECRET}}), UpstreamRejected),
        (
            400,
            json.dumps({"error": {"code": "context_length_exceeded", "message": (
                "This model's maximum context length is 100 tokens. However, you requested 130 "
                "tokens (114 in the messages, 16 in the completion)."
            )}}),
            PromptTooLong,
        ),
    ],
)  # fmt: skip
async def test_refusals_raise_before_any_event(
    upstream: Upstream, status: int, body: str, error: type[Exception]
) -> None:
    upstream.chat = lambda _: upstream.sse([body.encode()], status=status)
    stream = make(upstream).stream(ask())
    with pytest.raises(error) as info:
        await anext(stream)
    assert "10.9.8.7" not in str(info.value)
    assert upstream.bodies[0].closed


async def test_an_answer_that_is_not_an_event_stream_is_unavailable(upstream: Upstream) -> None:
    upstream.chat = lambda _: httpx.Response(200, json={"choices": []})
    with pytest.raises(UpstreamUnavailable):
        await anext(make(upstream).stream(ask()))


async def test_an_endless_error_body_is_read_only_up_to_a_bound(upstream: Upstream) -> None:
    upstream.chat = lambda _: upstream.sse([b"x" * 65536] * 1000, status=500)
    with pytest.raises(UpstreamUnavailable):
        await anext(make(upstream).stream(ask()))
    assert upstream.bodies[0].sent <= 2
    assert upstream.bodies[0].closed


async def test_redirects_are_not_followed(upstream: Upstream) -> None:
    upstream.chat = lambda _: httpx.Response(307, headers={"location": f"{BASE}/elsewhere"})
    with pytest.raises(UpstreamUnavailable) as info:
        await anext(make(upstream).stream(ask()))
    assert info.value.status == 307
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("exc", "timed_out"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), False),
        (httpx.ConnectTimeout("timed out"), True),
        (httpx.ReadTimeout("timed out"), True),
    ],
)
async def test_network_failures_are_unavailable(exc: Exception, timed_out: bool) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(UpstreamUnavailable) as info:
        await anext(make(fail).stream(ask()))
    assert info.value.timed_out is timed_out
    assert "Errno" not in str(info.value)


async def test_timeout_bounds_the_whole_generation(upstream: Upstream) -> None:
    # A token every 0.05 s never trips a per-read timeout; the total deadline still ends it.
    upstream.chat = lambda _: upstream.sse([p for _ in range(200) for p in (0.05, content("t"))])
    adapter = make(upstream, timeout_s=0.3)
    started = time.monotonic()
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamUnavailable) as info:
        await drain(adapter.stream(ask()), received)
    assert info.value.timed_out
    assert 0.25 < time.monotonic() - started < 2
    assert 2 <= len(received) < 10
    assert upstream.bodies[0].closed


async def test_a_silent_upstream_times_out_before_its_headers() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        await anext(make(never, timeout_s=0.2).stream(ask()))
    assert info.value.timed_out
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_closing_early_closes_the_upstream_response(upstream: Upstream, how: str) -> None:
    upstream.chat = lambda _: upstream.sse([p for _ in range(1000) for p in (0.01, content("t"))])
    stream = make(upstream).stream(ask())
    if how == "aclose":
        assert await anext(stream) == Delta("t")
        await stream.aclose()  # type: ignore[attr-defined]
    else:
        task = asyncio.create_task(collect(stream))
        await asyncio.wait_for(upstream.answered.wait(), 5)
        await asyncio.wait_for(upstream.bodies[0].flowing.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert upstream.bodies[0].closed
    assert upstream.bodies[0].sent < 20
