"""The upstream wire format: request bodies, SSE decoding, usage. Error answers as our errors:
``test_upstream_wire_errors.py``."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from adapters.base import (
    GenerationRequest,
    ImageInput,
    Message,
    ResponseFormat,
    SamplingParams,
    Usage,
)
from adapters.upstream.errors import UpstreamUnavailable
from adapters.upstream.wire import MAX_EVENT_BYTES, chat_body, parse_usage, sse_payloads
from tests.support import make_image
from tests.unit.adapters.upstream.upstream_fake import Body


def body_of(request: GenerationRequest, model: str = "big-vlm") -> dict[str, Any]:
    body: dict[str, Any] = json.loads(chat_body(request, model))
    return body


def test_body_carries_messages_sampling_and_streaming_options() -> None:
    image = ImageInput(make_image(320, 256, seed=3), digest="d")
    request = GenerationRequest(
        messages=(
            Message("system", ("Be terse.",)),
            Message("user", ("Compare", image, "with <|image_pad|> text")),
            Message("assistant", ("Done.",)),
        ),
        sampling=SamplingParams(
            max_tokens=20, temperature=0.3, top_p=0.9, seed=7, stop=("END", "", "\n\n")
        ),
        response_format=ResponseFormat("json_schema", {"type": "object"}, strict=True),
    )
    body = body_of(request)
    assert body["model"] == "big-vlm"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (
        20,
        0.3,
        0.9,
        7,
    )
    assert body["stop"] == ["END", "\n\n"]  # empty stops never match, so are not sent
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": True},
    }
    system, user, assistant = body["messages"]
    assert system == {"role": "system", "content": "Be terse."}
    assert assistant == {"role": "assistant", "content": "Done."}
    assert user["role"] == "user"
    first, picture, last = user["content"]
    assert first == {"type": "text", "text": "Compare"}
    assert last == {"type": "text", "text": "with <|image_pad|> text"}
    assert picture["type"] == "image_url"
    assert picture["image_url"]["detail"] == "high"
    prefix = "data:image/png;base64,"
    assert picture["image_url"]["url"].startswith(prefix)
    raw = base64.b64decode(picture["image_url"]["url"][len(prefix) :])
    decoded = Image.open(io.BytesIO(raw), formats=["PNG"])
    assert decoded.mode == "RGB"
    assert decoded.size == (320, 256)
    assert decoded.tobytes() == image.image.tobytes()  # lossless: the upstream sees our pixels


def test_optional_fields_are_left_out_and_json_object_passes_through() -> None:
    plain = GenerationRequest((Message("user", ("hi",)),), SamplingParams(max_tokens=5))
    body = body_of(plain)
    assert "seed" not in body
    assert "stop" not in body
    assert "response_format" not in body
    request = GenerationRequest(
        (Message("user", ("hi",)),),
        SamplingParams(max_tokens=5, stop=("a", "b", "c", "d", "e")),
        response_format=ResponseFormat("json_object"),
    )
    body = body_of(request)
    assert body["response_format"] == {"type": "json_object"}
    assert body["stop"] == ["a", "b", "c", "d"]  # OpenAI takes four; the fifth is cut locally


# -- SSE --------------------------------------------------------------------------------------


def payloads(pieces: Sequence[str | bytes], max_event_bytes: int = MAX_EVENT_BYTES) -> list[str]:
    """The ``data`` payloads of an event-stream body sent in ``pieces`` (one read each)."""
    body = Body([p.encode() if isinstance(p, str) else p for p in pieces])

    async def read() -> list[str]:
        response = httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, stream=body
        )
        return [data async for data in sse_payloads(response, max_event_bytes)]

    out = asyncio.run(read())
    assert body.closed
    return out


def test_sse_line_endings_comments_and_multiline_data() -> None:
    pieces = [': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\nda', "ta: x\rdata:y\r"]
    pieces += ["\nevent: ignored\n\n", "data: [DONE]"]
    # A last event without its blank line still counts (the SSE spec would drop it).
    assert payloads(pieces) == ['{"a": 1}', "x\ny", "[DONE]"]


def test_sse_carriage_return_split_from_its_line_feed() -> None:
    assert payloads(["data: a\r", "\ndata: b\r\n\r\n"]) == ["a\nb"]
    assert payloads(["data: a\r", "\r", "\ndata: b\n\n"]) == ["a", "b"]
    assert payloads(["data: a\r"]) == ["a"]


def test_sse_unicode_line_separators_and_split_characters_stay_inside_data() -> None:
    assert payloads(['data: {"t": "a\u2028b\x85c"}\n\n']) == ['{"t": "a\u2028b\x85c"}']
    raw = "data: h\u00e9\u4e16\n\n".encode()
    assert payloads([raw[:8], raw[8:10], raw[10:]]) == ["h\u00e9\u4e16"]


def test_sse_blocks_without_data_are_skipped() -> None:
    # httpx-sse reports a block with only event/id/retry fields as an event with empty data.
    pieces = ["event: ping\n\n", "id: 7\n\n", "retry: 10\n\n", "data: x\n\n", "\n\n"]
    assert payloads(pieces) == ["x"]


def test_sse_oversized_event_is_refused() -> None:
    with pytest.raises(UpstreamUnavailable):  # two data lines of one event
        payloads(["data: " + "x" * 60 + "\n", "data: " + "y" * 60 + "\n\n"], 100)
    with pytest.raises(UpstreamUnavailable):  # no line end at all
        payloads(["data: " + "z" * 200], 100)
    with pytest.raises(UpstreamUnavailable):  # comments count too: they are buffered as lines
        payloads([": " + "c" * 60 + "\n", ": " + "c" * 60 + "\n", "data: a\n\n"], 100)
    # The bound is per event: many events may add up to far more.
    assert payloads(["data: " + "w" * 60 + "\r\n\r\n"] * 20, 100) == ["w" * 60] * 20


def test_a_body_that_is_not_an_event_stream_is_a_transport_error() -> None:
    async def read() -> None:
        response = httpx.Response(200, json={"choices": []})
        async for _ in sse_payloads(response):
            raise AssertionError("no event expected")

    with pytest.raises(httpx.TransportError):  # the adapter's HTTPError handler takes it
        asyncio.run(read())


@given(
    st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)),
    st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_sse_events_do_not_depend_on_how_reads_are_split(
    texts: list[str], cuts: list[int], newline: str
) -> None:
    blocks = [f"data: {t}{newline}{newline}".encode() for t in texts]
    stream = b"".join(blocks)
    pieces: list[str | bytes] = []
    last = 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        pieces.append(stream[last:cut])  # may split a UTF-8 character or a "\r\n"
        last = cut
    pieces.append(stream[last:])
    # The bound holds each event, wherever the reads split it; an empty payload is no event.
    bound = max(map(len, blocks), default=0) + 1
    assert payloads(pieces, bound) == [t for t in texts if t]


def test_usage_needs_both_counts_and_caps_cached_tokens_at_the_prompt() -> None:
    counts = {"prompt_tokens": 5, "completion_tokens": 2}
    assert parse_usage(counts) == Usage(5, 2)
    assert parse_usage({**counts, "prompt_tokens_details": {"cached_tokens": 9}}) == Usage(5, 2, 5)
    for bad in (
        {"prompt_tokens": 5},
        {**counts, "prompt_tokens": True},
        {**counts, "prompt_tokens": -1},
    ):
        assert parse_usage(bad) is None
