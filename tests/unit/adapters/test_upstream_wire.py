"""The upstream wire format: request bodies, SSE decoding, and error answers as our errors."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from adapters.base import (
    GenerationRequest,
    ImageInput,
    Message,
    PromptTooLong,
    ResponseFormat,
    SamplingParams,
)
from adapters.upstreamerrors import UpstreamRejected, UpstreamUnavailable, error_for_status
from adapters.upstreamwire import SSEDecoder, chat_body
from tests.support import make_image

SECRET = "internal host 10.1.2.3 /srv/models/secret key sk-live-abc at 0x7f00deadbeef"


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


def test_sse_line_endings_comments_and_multiline_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\nda') == ['{"a": 1}']
    assert decoder.feed("ta: x\rdata:y\r") == []
    assert decoder.feed("\nevent: ignored\n\n") == ["x\ny"]
    assert decoder.feed("data: [DONE]") == []
    assert decoder.close() == ["[DONE]"]  # a last event without its blank line still counts


def test_sse_carriage_return_split_from_its_line_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("data: a\r") == []
    assert decoder.feed("\ndata: b\r\n\r\n") == ["a\nb"]


def test_sse_unicode_line_separators_stay_inside_data() -> None:
    assert SSEDecoder().feed('data: {"t": "a\u2028b\x85c"}\n\n') == ['{"t": "a\u2028b\x85c"}']


def test_sse_oversized_event_is_refused() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    decoder.feed("data: " + "x" * 60 + "\n")
    with pytest.raises(UpstreamUnavailable):
        decoder.feed("data: " + "y" * 60 + "\n")
    with pytest.raises(UpstreamUnavailable):
        SSEDecoder(max_event_chars=100).feed("data: " + "z" * 200)  # no line end at all


@given(
    st.lists(st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=20), max_size=6),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_sse_events_do_not_depend_on_how_reads_are_split(
    payloads: list[str], cuts: list[int], newline: str
) -> None:
    stream = "".join(f"data: {p}{newline}{newline}" for p in payloads)
    pieces, last = [], 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    decoder = SSEDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.close()
    assert events == payloads  # an empty "data:" line is still an event


# -- errors -----------------------------------------------------------------------------------


def openai_error(message: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": "x", "code": code}}).encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # OpenAI and vlm-gateway
            openai_error(
                "This model's maximum context length is 8192 tokens. However, you requested "
                "9000 tokens (8000 in the messages, 1000 in the completion). Please reduce.",
                "context_length_exceeded",
            ),
            (8000, 1000, 8192),
        ),
        (  # SGLang
            json.dumps(
                {
                    "object": "error",
                    "code": 400,
                    "message": "Requested token count exceeds the model's maximum context length "
                    "of 4096 tokens. You requested a total of 5000 tokens: 4500 tokens from the "
                    "input messages and 500 tokens for the completion. Please reduce.",
                }
            ).encode(),
            (4500, 500, 4096),
        ),
        (  # newer vLLM: the completion is our max_tokens
            json.dumps(
                {
                    "object": "error",
                    "message": "'max_tokens' is too large: 64. This model's maximum context "
                    "length is 2048 tokens and your request has 2000 input tokens (64 > 2048 - "
                    "2000).",
                }
            ).encode(),
            (2000, 64, 2048),
        ),
        (
            openai_error(
                "The decoder prompt (length 5000) is longer than the maximum model length of 4096."
            ),
            (5000, 64, 4096),
        ),
    ],
)
def test_context_length_errors_become_prompt_too_long(
    raw: bytes, expected: tuple[int, int, int]
) -> None:
    error = error_for_status(400, raw, {}, max_tokens=64)
    assert isinstance(error, PromptTooLong)
    assert (error.prompt_tokens, error.max_tokens, error.context_length) == expected
    assert str(error).startswith(f"This model's maximum context length is {expected[2]} tokens.")


def test_a_deeply_nested_error_body_is_still_an_error() -> None:
    error = error_for_status(400, b"[" * 100_000, {}, 8)
    assert isinstance(error, UpstreamRejected)


def test_context_length_error_without_numbers_is_rejected_with_its_code() -> None:
    error = error_for_status(
        400, openai_error(f"context length exceeded on {SECRET}", "context_length_exceeded"), {}, 8
    )
    assert isinstance(error, UpstreamRejected)
    assert error.code == "context_length_exceeded"
    assert "10.1.2.3" not in str(error)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_refusals_never_echo_upstream_text(status: int) -> None:
    error = error_for_status(status, openai_error(SECRET), {}, 8)
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.code) == (status, "invalid_request")
    for leak in ("10.1.2.3", "/srv", "sk-live", "0x7f"):
        assert leak not in str(error)


@pytest.mark.parametrize(
    ("status", "headers", "timed_out", "retry_after"),
    [
        (500, {}, False, None),
        (502, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
        (307, {"location": "http://127.0.0.1:1/elsewhere"}, False, None),
        (408, {}, True, None),
        (429, {"retry-after": "7"}, False, 7),
        (503, {"retry-after": "999999"}, False, 3600),
        (503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, False, None),
        (503, {"retry-after": "²"}, False, None),  # a digit to str.isdigit, not to int()
    ],
)
def test_unavailable_answers(
    status: int, headers: dict[str, str], timed_out: bool, retry_after: int | None
) -> None:
    error = error_for_status(status, SECRET.encode(), headers, 8)
    assert isinstance(error, UpstreamUnavailable)
    assert (error.status, error.timed_out, error.retry_after) == (status, timed_out, retry_after)
    assert "10.1.2.3" not in str(error)
