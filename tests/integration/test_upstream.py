"""UpstreamAdapter against a real upstream: a ``vlm-gateway serve`` process on loopback serving
the tiny random Qwen3-VL behind a bearer key. Greedy answers through the adapter must equal what
the upstream answers directly to the same request."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base import (
    Delta,
    Finish,
    GenerationRequest,
    ImageInput,
    Message,
    ModelUnavailable,
    PromptTooLong,
    ResponseFormat,
    SamplingParams,
    StreamEvent,
    Tools,
    ToolSpec,
    collect,
)
from adapters.upstream import UpstreamAdapter, UpstreamConfig
from tests.integration.conftest import Server, free_port
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

KEY = "upstream-test-key"
KEY_ENV = "VLM_UPSTREAM_TEST_KEY"
SYSTEM = "You are a careful assistant."  # a client system message: the router adds none
QUESTION = "What does the picture show?"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture(scope="module")
def upstream(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # One generation slot: a cancelled generation that kept running would block the next one.
    srv = Server(
        tiny_model_dir,
        tmp_path_factory.mktemp("upstream") / "upstream.log",
        VLM_GATEWAY_API_KEYS=KEY,
        VLM_GATEWAY_SERVER__MAX_CONCURRENT="1",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def adapter_for(
    server: Server, model: str, key: str = KEY, base_url: str | None = None
) -> UpstreamAdapter:
    config = UpstreamConfig(
        base_url=base_url or f"{server.base_url}/v1",
        model=model,
        api_key_env=KEY_ENV,
        timeout_s=60,
        probe_timeout_s=5,
    )
    return UpstreamAdapter(config, environ={KEY_ENV: key})


async def direct(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    """The upstream's own non-streaming answer."""
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{server.base_url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def in_flight(server: Server) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.base_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("vlm_gateway_in_flight_requests "):
            return float(line.split()[1])
    raise AssertionError("vlm_gateway_in_flight_requests not exported")


def conversation(with_image: bool, text: str = QUESTION) -> tuple[list[Message], list[Any]]:
    """The same conversation as internal messages and as OpenAI wire messages."""
    image = make_image(320, 256, seed=7)  # multiples of 32: the size the model sees
    parts: list[Any] = [text]
    wire: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if with_image:
        parts.insert(0, ImageInput(image, digest="seed7"))
        wire.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    internal = [Message("system", (SYSTEM,)), Message("user", tuple(parts))]
    return internal, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": wire}]


def request(messages: list[Message], max_tokens: int, **extra: Any) -> GenerationRequest:
    fmt = extra.pop("response_format", None)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)
    return GenerationRequest(tuple(messages), sampling, response_format=fmt)


async def test_start_checks_reachability_model_and_key(
    upstream: Server, tiny_model_dir: Path
) -> None:
    good = adapter_for(upstream, str(tiny_model_dir))
    await good.start()
    await good.aclose()
    cases = {
        "does not serve the model 'no-such-model'": adapter_for(upstream, "no-such-model"),
        "HTTP 401": adapter_for(upstream, str(tiny_model_dir), key="wrong-key"),
        "cannot be reached": adapter_for(
            upstream, str(tiny_model_dir), base_url=f"http://127.0.0.1:{free_port()}/v1"
        ),
    }
    for expected, adapter in cases.items():
        with pytest.raises(ModelUnavailable, match=expected):
            await adapter.start()
        await adapter.aclose()


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
async def test_greedy_stream_equals_the_upstream_answer(
    upstream: Server, tiny_model_dir: Path, with_image: bool
) -> None:
    internal, wire = conversation(with_image)
    expected = await direct(
        upstream,
        {"model": str(tiny_model_dir), "messages": wire, "max_tokens": 16, "temperature": 0},
    )
    adapter = adapter_for(upstream, str(tiny_model_dir))
    try:
        events: list[StreamEvent] = [e async for e in adapter.stream(request(internal, 16))]
    finally:
        await adapter.aclose()
    deltas = [e.text for e in events if isinstance(e, Delta)]
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert len(deltas) > 1  # streamed in pieces, not collected upstream
    assert "".join(deltas) == expected["choices"][0]["message"]["content"]
    assert finish.finish_reason == expected["choices"][0]["finish_reason"]
    assert finish.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert finish.usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert finish.usage.image_tokens == (80 if with_image else 0)  # 320x256 / 32x32


async def test_stop_strings_cut_exactly(upstream: Server, tiny_model_dir: Path) -> None:
    internal, wire = conversation(with_image=False, text="Describe the weather")
    full = await direct(
        upstream,
        {"model": str(tiny_model_dir), "messages": wire, "max_tokens": 24, "temperature": 0},
    )
    text = full["choices"][0]["message"]["content"]
    assert len(text) > 12, text
    stop = text[8:11]
    cut = text[: text.index(stop)]
    adapter = adapter_for(upstream, str(tiny_model_dir))
    try:
        # The upstream cuts itself; then four stops sent upstream and a fifth cut only here.
        for stops in [(stop,), ("\x00a", "\x00b", "\x00c", "\x00d", stop)]:
            done = await collect(adapter.stream(request(internal, 24, stop=stops)))
            assert (done.text, done.finish_reason) == (cut, "stop")
    finally:
        await adapter.aclose()


async def test_response_format_passes_through(upstream: Server, tiny_model_dir: Path) -> None:
    internal, wire = conversation(with_image=False, text="Give me the JSON")
    expected = await direct(
        upstream,
        {
            "model": str(tiny_model_dir),
            "messages": wire,
            "max_tokens": 24,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": SCHEMA},
            },
        },
    )
    fmt = ResponseFormat("json_schema", SCHEMA)
    adapter = adapter_for(upstream, str(tiny_model_dir))
    try:
        done = await collect(adapter.stream(request(internal, 24, response_format=fmt)))
    finally:
        await adapter.aclose()
    assert done.text == expected["choices"][0]["message"]["content"]


async def test_context_overflow_is_prompt_too_long(upstream: Server, tiny_model_dir: Path) -> None:
    internal, _ = conversation(with_image=False)
    adapter = adapter_for(upstream, str(tiny_model_dir))
    try:
        with pytest.raises(PromptTooLong) as info:
            await anext(adapter.stream(request(internal, 10_000_000)))
    finally:
        await adapter.aclose()
    assert info.value.max_tokens == 10_000_000
    assert info.value.context_length > 0
    assert 0 < info.value.prompt_tokens < 100


async def test_closing_the_stream_cancels_the_upstream_generation(
    upstream: Server, tiny_model_dir: Path
) -> None:
    # Greedy, this prompt runs the tiny model to max_tokens: 20k tokens take over 30 s.
    internal = [Message("user", ("Write a long essay.",))]
    adapter = adapter_for(upstream, str(tiny_model_dir))
    try:
        stream = adapter.stream(request(internal, 20_000))
        for _ in range(3):
            assert isinstance(await anext(stream), Delta)
        assert await in_flight(upstream) == 1.0
        await stream.aclose()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while await in_flight(upstream) != 0.0:
            assert time.monotonic() < deadline, "the upstream generation kept running"
            await asyncio.sleep(0.05)
        # Its one slot is free: a short request is answered at once.
        started = time.monotonic()
        done = await collect(adapter.stream(request(internal, 2)))
        assert time.monotonic() - started < 10
        assert done.usage.completion_tokens <= 2
    finally:
        await adapter.aclose()


async def test_tools_calls_and_results_through_a_real_upstream(
    upstream: Server, tiny_model_dir: Path
) -> None:
    """The upstream gets the tools and the choice; its streamed call comes back whole and equal
    to what it answers directly; the call and its result go back in the next turn."""
    parameters = {"type": "object", "properties": {"zone": {"type": "string"}}}
    tools = Tools((ToolSpec("get_time", "The time.", parameters),), "function", "get_time")
    internal, wire = conversation(with_image=True, text="What time is it?")
    named = {"type": "function", "function": {"name": "get_time"}}
    expected = await direct(
        upstream,
        {
            "model": str(tiny_model_dir), "messages": wire, "max_tokens": 48, "temperature": 0,
            "tools": [tools.specs[0].as_openai()], "tool_choice": named,
        },
    )  # fmt: skip
    adapter = adapter_for(upstream, str(tiny_model_dir))
    asked = dataclasses.replace(request(internal, 48), tools=tools)
    try:
        done = await collect(adapter.stream(asked))
        assert done.finish_reason == "tool_calls"
        want = expected["choices"][0]["message"]["tool_calls"]
        assert [(c.name, c.arguments) for c in done.tool_calls] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in want
        ]
        call = done.tool_calls[0]
        follow = (
            Message("assistant", (), tool_calls=(call,)),
            Message("tool", ('{"time": "12:00"}',), tool_call_id=call.id),
        )
        answer = dataclasses.replace(
            asked,
            messages=(*asked.messages, *follow),
            tools=dataclasses.replace(tools, choice="none"),
        )
        final = await collect(adapter.stream(answer))
        assert final.finish_reason in ("stop", "length")
        assert final.tool_calls == ()
    finally:
        await adapter.aclose()
