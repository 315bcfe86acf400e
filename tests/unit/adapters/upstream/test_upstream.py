"""UpstreamAdapter streaming against an emulated OpenAI SSE server (httpx.MockTransport):
deltas, usage, stops, finish reasons, broken streams, refusals, timeouts, early close."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from adapters.base import (
    Adapter,
    Capabilities,
    Delta,
    Finish,
    GenerationRequest,
    ImageInput,
    Message,
    PromptTooLong,
    SamplingParams,
    StreamEvent,
    Usage,
    collect,
)
from adapters.upstream import (
    UpstreamAdapter,
    UpstreamConfig,
    UpstreamRejected,
    UpstreamUnavailable,
)
from tests.support import make_image
from tests.unit.adapters.upstream.upstream_fake import (
    BASE,
    DONE,
    SECRET,
    Part,
    Upstream,
    ask,
    content,
    drain,
    events,
    frame,
    make,
    usage,
)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


async def test_deltas_then_one_finish_with_the_upstream_usage(upstream: Upstream) -> None:
    ping = b": keep-alive\n\nevent: ping\nid: 1\n\n"  # no data: nothing to parse
    upstream.chat = lambda _: upstream.sse(
        [content("Hel"), ping, content("lo"), content(" world", "stop"), usage(11, 3, 4), DONE]
    )
    adapter = make(upstream)
    assert isinstance(adapter, Adapter)
    out = await events(adapter, ask())
    assert out[:-1] == [Delta("Hel"), Delta("lo"), Delta(" world")]
    finish = out[-1]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "stop"
    assert finish.usage == Usage(11, 3, cached_tokens=4)
    assert set(finish.timings) == {"prefill", "decode"}
    assert upstream.bodies[0].closed
    sent = upstream.sent()
    assert sent["model"] == "big-vlm"  # the configured name, whatever the client called it
    assert sent["stream"] is True
    await adapter.aclose()


async def test_usage_counts_image_tokens_from_the_capabilities(upstream: Upstream) -> None:
    upstream.chat = lambda _: upstream.sse([content("ok", "length"), usage(200, 1), DONE])
    caps = Capabilities(model_id="big-vlm", image_factor=32)
    adapter = UpstreamAdapter(
        UpstreamConfig(base_url=BASE, model="big-vlm"),
        caps,
        transport=httpx.MockTransport(upstream),
    )
    image = ImageInput(make_image(320, 256), digest="x")
    request = GenerationRequest((Message("user", (image, "what?")),), SamplingParams(max_tokens=1))
    done = await collect(adapter.stream(request))
    assert (done.text, done.finish_reason) == ("ok", "length")
    assert done.usage == Usage(200, 1, image_tokens=80)
    assert adapter.capabilities is caps


async def test_images_are_encoded_off_the_event_loop(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.upstream.adapter as module

    threads: list[str] = []
    real = module.chat_body

    def recording(request: GenerationRequest, model: str) -> bytes:
        threads.append(threading.current_thread().name)
        return real(request, model)

    monkeypatch.setattr(module, "chat_body", recording)
    adapter = make(upstream)
    image = ImageInput(make_image(64, 64), digest="x")
    await collect(adapter.stream(ask()))
    await collect(
        adapter.stream(
            GenerationRequest((Message("user", (image,)),), SamplingParams(max_tokens=2))
        )
    )
    main = threading.main_thread().name
    assert threads[0] == main  # text only: nothing blocking to move
    assert threads[1] != main


@pytest.mark.parametrize(
    ("reason", "expected"), [("stop", "stop"), ("length", "length"), ("content_filter", "stop")]
)
async def test_finish_reasons_map_to_stop_or_length(
    upstream: Upstream, reason: str, expected: str
) -> None:
    upstream.chat = lambda _: upstream.sse([content("x", reason), DONE])
    done = await collect(make(upstream).stream(ask()))
    assert done.finish_reason == expected
    assert done.usage == Usage(0, 1)  # no usage chunk: completion counts the content chunks


async def test_stop_cut_locally_even_when_the_upstream_ignores_it(upstream: Upstream) -> None:
    # The fifth stop is never sent (OpenAI takes four); the cut still happens here, across
    # chunk boundaries, and the upstream response is closed at once.
    stops = ("s1", "s2", "s3", "s4", "END")
    upstream.chat = lambda _: upstream.sse(
        [content("ab"), content("cE"), content("N"), content("D more"), *[content("x")] * 50]
    )
    adapter = make(upstream)
    out = await events(adapter, ask(stop=stops))
    assert upstream.sent()["stop"] == ["s1", "s2", "s3", "s4"]
    assert "".join(e.text for e in out if isinstance(e, Delta)) == "abc"
    finish = out[-1]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "stop"
    assert upstream.bodies[0].closed
    assert upstream.bodies[0].sent < 10


async def test_held_back_text_is_released_at_the_end(upstream: Upstream) -> None:
    upstream.chat = lambda _: upstream.sse([content("wait <"), content("/e", "stop"), DONE])
    done = await collect(make(upstream).stream(ask(stop=("</end>",))))
    assert (done.text, done.finish_reason) == ("wait </e", "stop")


async def test_a_stream_without_done_ends_at_eof(upstream: Upstream) -> None:
    upstream.chat = lambda _: upstream.sse([content("a"), content("b", "length"), usage(2, 2)])
    done = await collect(make(upstream).stream(ask()))
    assert (done.text, done.finish_reason, done.usage) == ("ab", "length", Usage(2, 2))


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
