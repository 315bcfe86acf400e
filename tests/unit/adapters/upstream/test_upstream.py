"""UpstreamAdapter streaming against an emulated OpenAI SSE server (httpx.MockTransport):
deltas, usage, stops, finish reasons. Broken streams, refusals, timeouts and early close:
``test_upstream_failures.py``."""

from __future__ import annotations

import threading

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
    SamplingParams,
    Usage,
    collect,
)
from adapters.upstream import UpstreamAdapter, UpstreamConfig
from tests.support import make_image
from tests.unit.adapters.upstream.upstream_fake import (
    BASE,
    DONE,
    Upstream,
    ask,
    content,
    events,
    make,
    usage,
)


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

    def recording(request: GenerationRequest, model: str, *uuids: bool) -> bytes:
        threads.append(threading.current_thread().name)
        return real(request, model, *uuids)

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
