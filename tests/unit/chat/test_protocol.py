from __future__ import annotations

import json

import msgspec
import pytest

from gateway.chat import decode_request
from gateway.chat import protocol as wire
from gateway.errors import InvalidJSON, InvalidValue


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return json.dumps(base).encode()


def test_parses_openai_request_with_extras_ignored() -> None:
    request = decode_request(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}},
                    ],
                }
            ],
            stream=True,
            stream_options={"include_usage": True},
            some_future_field={"x": 1},
        )
    )
    part = request.messages[0].content[1]  # type: ignore[index]
    assert isinstance(part, wire.ImageURLPart)
    assert part.image_url.detail == "low"
    assert request.stream_options is not None
    assert request.stream_options.include_usage


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (body(max_tokens="ten"), "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(temperature=3), "temperature"),
        (
            body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
            "messages[0].content[0].type",
        ),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (body(messages=[]), "messages"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop"),
    ],
)
def test_schema_errors_name_the_field(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidValue) as info:
        decode_request(raw)
    assert info.value.param == param
    assert info.value.status == 400


def test_missing_model_is_a_400_without_param() -> None:
    with pytest.raises(InvalidValue, match="model"):
        decode_request(b'{"messages": [{"role": "user", "content": "x"}]}')


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"\xff\xfe",
        b'{"model": "\xff", "messages": []}',
        body(x=1)[:-1] + b', "prediction": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        body(
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}}]
        ).replace(b'{"a": 1}', b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        b"",
    ],
)
def test_malformed_json_invalid_utf8_and_deep_nesting_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON):
        decode_request(raw)


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("n", 2, "n"),
        ("n", 1, None),
        ("logprobs", True, "logprobs"),
        ("logprobs", False, None),
        ("functions", [{"name": "f"}], "functions"),
        ("function_call", "none", None),
        ("tools", [{"type": "function", "function": {"name": "f"}}], None),
        ("presence_penalty", 0.5, "presence_penalty"),
        ("presence_penalty", 0, None),
    ],
)
def test_known_unsupported_fields(field: str, value: object, refused: str | None) -> None:
    assert decode_request(body(**{field: value})).unsupported() == refused


def test_chunk_usage_is_omitted_or_null_as_openai_does() -> None:
    chunk = wire.ChatCompletionChunk(id="c", created=1, model="m", choices=[])
    assert "usage" not in msgspec.json.decode(msgspec.json.encode(chunk))
    chunk = wire.ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=None)
    assert msgspec.json.decode(msgspec.json.encode(chunk))["usage"] is None
