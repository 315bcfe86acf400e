"""Chat completions through the whole app: shapes, parameters, streaming and the error contract."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from tests.api.conftest import (
    MODEL,
    ClientFactory,
    build_app,
    http_client,
    running,
    stream_then_disconnect,
)
from tests.support import data_url, make_image

URL = "/v1/chat/completions"


def chat(content: Any = "Hello there", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def image_content(text: str = "What is in this image?") -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
    ]


def sse_payloads(text: str) -> list[str]:
    events = text.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e.removeprefix("data: ") for e in events[:-1]]


def assert_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param
    assert "Traceback" not in error["message"]
    assert "0x" not in error["message"]
    return dict(error)


async def test_completion_shape_and_usage(fake: tuple[httpx.AsyncClient, FakeAdapter]) -> None:
    client, adapter = fake
    adapter.enqueue("A red square and a blue circle.")
    response = await client.post(URL, json=chat(image_content()))
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "A red square and a blue circle.",
                "refusal": None,
            },
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    usage = body["usage"]
    image_tokens = 10 * 8
    assert usage["prompt_tokens"] > image_tokens
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    # The adapter received a prepared RGB image at the model's size.
    (request,) = adapter.requests
    (image,) = request.images
    assert image.size == (320, 256)
    assert image.image.mode == "RGB"


async def test_max_tokens_and_stop_are_honoured(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    client, adapter = fake
    adapter.enqueue("one two three four five", "alpha beta. gamma")
    response = await client.post(URL, json=chat(max_completion_tokens=3))
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["choices"][0]["finish_reason"] == "length"
    response = await client.post(URL, json=chat(stop=". g"))
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "alpha beta"
    assert body["choices"][0]["finish_reason"] == "stop"
    sampling = adapter.requests[-1].sampling
    assert sampling.stop == (". g",)


async def test_sampling_parameters_reach_the_adapter(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    client, adapter = fake
    await client.post(
        URL, json=chat(temperature=0, top_p=0.5, seed=7, max_tokens=9, user="u-1", stop=["x", "y"])
    )
    sampling = adapter.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed, sampling.max_tokens) == (
        0,
        0.5,
        7,
        9,
    )
    assert sampling.stop == ("x", "y")


async def test_stream_chunks_in_openai_order(fake: tuple[httpx.AsyncClient, FakeAdapter]) -> None:
    client, adapter = fake
    adapter.enqueue("one two three")
    response = await client.post(
        URL, json=chat(stream=True, stream_options={"include_usage": True})
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three"
    finish = chunks[-2]
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_usage_has_no_usage_field(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(stream=True))
    chunks = [json.loads(p) for p in sse_payloads(response.text)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(some_new_openai_field={"a": 1}, store=False))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ],
)
async def test_known_unsupported_fields_are_refused_by_name(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    assert_error(await client.post(URL, json=chat(**fields)), 400, "unsupported_parameter", param)


@pytest.mark.parametrize(
    ("messages", "status", "code", "param"),
    [
        (
            [{"role": "function", "content": "x", "name": "f"}],
            400,
            "unsupported_parameter",
            "messages[0].role",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                },
                {"role": "user", "content": "x"},
            ],
            400,
            "invalid_value",
            "messages[0].content[0].image_url",
        ),
        (
            [{"role": "system", "content": "only a system message"}],
            400,
            "invalid_value",
            "messages",
        ),
        ([{"role": "user"}], 400, "invalid_value", "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "input_audio"}]}],
            400,
            "invalid_value",
            "messages[0].content[0].type",
        ),
    ],
)
async def test_message_structure_errors(
    client: httpx.AsyncClient, messages: list[Any], status: int, code: str, param: str
) -> None:
    response = await client.post(URL, json={"model": MODEL, "messages": messages})
    assert_error(response, status, code, param)


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json={**chat(), "model": "gpt-9"})
    assert_error(response, 404, "model_not_found", "model")


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"model": "\xff\xfe"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        b"",
    ],
    ids=["malformed", "invalid-utf8", "deeply-nested", "empty"],
)
async def test_bad_bodies_are_400_invalid_json(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert (await client.post(URL, json=chat())).status_code == 200


async def test_litestar_errors_use_the_envelope(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nope"), 404, "not_found")
    assert_error(await client.get(URL), 405, "method_not_allowed")


async def test_body_too_large_is_413(make_client: ClientFactory) -> None:
    async with make_client(server={"max_body_bytes": 1000}) as (client, _):
        response = await client.post(URL, json=chat("x" * 2000))
        assert_error(response, 413, "request_too_large")


async def test_context_length_exceeded(make_client: ClientFactory) -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL, context_length=50))
    async with make_client(adapter) as (client, _):
        response = await client.post(URL, json=chat("word " * 30, max_tokens=30))
        error = assert_error(response, 400, "context_length_exceeded", "messages")
        assert "maximum context length is 50 tokens" in error["message"]
        response = await client.post(URL, json=chat("word " * 30, max_tokens=30, stream=True))
        assert_error(response, 400, "context_length_exceeded", "messages")


async def test_unexpected_exception_is_a_generic_500(make_client: ClientFactory) -> None:
    class Broken(FakeAdapter):
        def stream(self, request: Any) -> Any:
            raise RuntimeError("secret internal detail at 0xdeadbeef")

    async with make_client(Broken(Capabilities(model_id=MODEL))) as (client, _):
        error = assert_error(await client.post(URL, json=chat()), 500, "internal_error")
        assert "secret" not in error["message"]
        assert error["type"] == "server_error"
        assert (await client.get("/health")).status_code == 200


async def test_api_keys(make_client: ClientFactory) -> None:
    async with make_client(server={"api_keys": ("k-123",)}) as (client, _):
        response = await client.post(URL, json=chat())
        assert_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
        assert (
            await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        ok = await client.post(URL, json=chat(), headers={"Authorization": "Bearer k-123"})
        assert ok.status_code == 200
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200


async def test_overload_is_503_with_retry_after(make_client: ClientFactory) -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.05)
    async with make_client(
        adapter, server={"max_concurrent": 1, "max_queue": 0, "retry_after_s": 2}
    ) as (
        client,
        _,
    ):
        slow = asyncio.create_task(client.post(URL, json=chat()))
        await asyncio.wait_for(adapter.generating.wait(), 5)
        response = await client.post(URL, json=chat())
        assert_error(response, 503, "server_overloaded")
        assert response.headers["retry-after"] == "2"
        assert (await slow).status_code == 200
        assert (await client.post(URL, json=chat())).status_code == 200


async def test_deadline_is_504(make_client: ClientFactory) -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.5)
    async with make_client(adapter, server={"request_timeout_s": 0.2}) as (client, _):
        assert_error(await client.post(URL, json=chat()), 504, "timeout")
        assert adapter.active == 0
        # Before the first token, a stream's timeout is still a plain JSON error.
        assert_error(await client.post(URL, json=chat(stream=True)), 504, "timeout")
        assert adapter.active == 0


async def test_deadline_after_the_stream_started_is_an_error_frame(
    make_client: ClientFactory,
) -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.15)
    async with make_client(adapter, server={"request_timeout_s": 0.4}) as (client, _):
        response = await client.post(URL, json=chat(stream=True))
        assert response.status_code == 200
        payloads = sse_payloads(response.text)
        assert json.loads(payloads[1])["choices"][0]["delta"]["content"] == "This"
        assert json.loads(payloads[-1])["error"]["code"] == "timeout"
        assert "[DONE]" not in payloads
        assert adapter.active == 0


async def test_client_disconnect_cancels_the_stream() -> None:
    """Through raw ASGI: the client disconnects after the first content chunk."""
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.05)
    adapter.enqueue(" ".join(["word"] * 200))  # 10 s unless cancelled
    app = build_app(adapter)
    async with running(app):
        await stream_then_disconnect(app, chat(stream=True), b"word")
        assert adapter.active == 0
        assert adapter.cancelled == 1
        assert len(adapter.requests) == 1
        async with http_client(app) as client:
            assert (await client.post(URL, json=chat())).status_code == 200


async def test_rate_limit_is_per_key_with_retry_after(make_client: ClientFactory) -> None:
    server = {"api_keys": ("k1", "k2"), "rate_limit_per_minute": 2}
    async with make_client(server=server) as (client, _):
        k1 = {"Authorization": "Bearer k1"}
        spoofed = {**k1, "X-Forwarded-For": "10.9.8.7"}
        assert (await client.post(URL, json=chat(), headers=k1)).status_code == 200
        assert (await client.post(URL, json=chat(), headers=spoofed)).status_code == 200
        limited = await client.post(URL, json=chat(), headers=spoofed)
        assert_error(limited, 429, "rate_limit_exceeded")
        assert int(limited.headers["retry-after"]) >= 1
        other = await client.post(URL, json=chat(), headers={"Authorization": "Bearer k2"})
        assert other.status_code == 200
        # Authentication comes first: a wrong key is 401, not 429.
        wrong = await client.post(URL, json=chat(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await client.get("/health")).status_code == 200
