"""Function calling through the upstream adapter: tools, choices, calls and results forwarded in
OpenAI's shapes; the upstream's streamed call pieces back as ``ToolCallDelta`` values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.base import (
    Delta,
    Finish,
    GenerationRequest,
    Message,
    SamplingParams,
    ToolCall,
    ToolCallDelta,
    Tools,
    ToolSpec,
    collect,
)
from adapters.testing import FakeAdapter
from adapters.upstream.errors import UpstreamUnavailable
from adapters.upstream.wire import chat_body
from gateway.cli import _backends
from gateway.routing import CONFIG_DIR, CapabilityRouter
from tests.unit.adapters.upstream.upstream_fake import (
    DONE,
    Upstream,
    content,
    events,
    frame,
    make,
    usage,
)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = ToolSpec("get_weather", "The weather in a city.", SCHEMA)
CLOCK = ToolSpec("get_time")


def ask_with(tools: Tools, *messages: Message) -> GenerationRequest:
    history = messages or (Message("user", ("Weather in Paris?",)),)
    return GenerationRequest(history, SamplingParams(max_tokens=32), tools=tools)


def piece(index: int, *, id: str | None = None, name: str | None = None, args: str = "") -> Any:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id is not None:
        call.update(id=id, type="function")
    if name is not None:
        call["function"]["name"] = name
    return call


def calls(*pieces: Any, finish: str | None = None) -> bytes:
    delta = {"tool_calls": list(pieces)}
    return frame({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize(
    ("tools", "choice"),
    [
        (Tools((WEATHER, CLOCK)), "auto"),
        (Tools((WEATHER,), "required", parallel=False), "required"),
        (Tools((WEATHER,), "none"), "none"),
        (
            Tools((WEATHER, CLOCK), "function", "get_time"),
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
)
def test_tools_and_choice_are_forwarded_as_the_client_sent_them(tools: Tools, choice: Any) -> None:
    body = json.loads(chat_body(ask_with(tools), "big-vlm"))
    assert body["tools"] == [spec.as_openai() for spec in tools.specs]
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": SCHEMA,
        },
    }
    assert body["tool_choice"] == choice
    assert body["parallel_tool_calls"] is tools.parallel


def test_calls_and_results_are_forwarded_in_the_conversation() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    request = ask_with(
        Tools((WEATHER,)),
        Message("user", ("Weather in Paris?",)),
        Message("assistant", (), tool_calls=(call,)),
        Message("tool", ("21C",), tool_call_id="call_1"),
        Message("assistant", ("Let me look.",), tool_calls=(call,)),
    )
    messages = json.loads(chat_body(request, "big-vlm"))["messages"]
    wire_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [wire_call]}
    assert messages[2] == {"role": "tool", "content": "21C", "tool_call_id": "call_1"}
    assert messages[3]["content"] == "Let me look."
    assert "tools" not in json.loads(chat_body(ask_with(None), "big-vlm"))  # type: ignore[arg-type]


async def test_streamed_calls_become_tool_call_deltas(upstream: Upstream) -> None:
    upstream.chat = lambda _: upstream.sse(
        [
            content("Checking."),
            calls(piece(0, id="call_a", name="get_weather", args="")),
            calls(piece(0, args='{"city"')),
            calls(piece(0, args=': "Paris"}')),
            calls(piece(1, id="call_b", name="get_time", args="{}")),
            content("", "tool_calls"),
            usage(20, 9),
            DONE,
        ]
    )
    out = await events(make(upstream), ask_with(Tools((WEATHER, CLOCK))))
    assert out[:-1] == [
        Delta("Checking."),
        ToolCallDelta(0, id="call_a", name="get_weather"),
        ToolCallDelta(0, arguments='{"city"'),
        ToolCallDelta(0, arguments=': "Paris"}'),
        ToolCallDelta(1, id="call_b", name="get_time", arguments="{}"),
    ]
    finish = out[-1]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "tool_calls"
    assert finish.usage.completion_tokens == 9


async def test_odd_upstreams_still_stream_the_contract(upstream: Upstream) -> None:
    # Indexes from 1, id and name repeated on every piece, no id at all, and "stop" at the end.
    upstream.chat = lambda _: upstream.sse(
        [
            calls(piece(1, id="call_a", name="get_weather", args='{"city": ')),
            calls(piece(1, id="call_a", name="get_weather", args='"Oslo"}')),
            calls(piece(2, name="get_time", args="{}"), finish="stop"),
            DONE,
        ]
    )
    done = await collect(make(upstream).stream(ask_with(Tools((WEATHER, CLOCK)))))
    assert done.finish_reason == "tool_calls"
    assert done.tool_calls[0] == ToolCall("call_a", "get_weather", '{"city": "Oslo"}')
    second = done.tool_calls[1]
    assert (second.name, second.arguments) == ("get_time", "{}")
    assert second.id.startswith("call_")
    assert len(second.id) > 8


@pytest.mark.parametrize(
    ("reason", "with_calls", "expected"),
    [
        ("tool_calls", False, "stop"),
        ("length", True, "length"),
        ("function_call", True, "tool_calls"),
    ],
)
async def test_finish_reasons(
    upstream: Upstream, reason: str, with_calls: bool, expected: str
) -> None:
    pieces = [calls(piece(0, id="c", name="get_time", args="{}"))] if with_calls else []
    upstream.chat = lambda _: upstream.sse([*pieces, content("", reason), DONE])
    done = await collect(make(upstream).stream(ask_with(Tools((CLOCK,)))))
    assert done.finish_reason == expected


@pytest.mark.parametrize("bad", [["not a call"], [{"index": "0", "function": {}}]])
async def test_malformed_call_pieces_are_a_broken_stream(upstream: Upstream, bad: Any) -> None:
    upstream.chat = lambda _: upstream.sse([calls(*bad), DONE])
    with pytest.raises(UpstreamUnavailable, match="malformed"):
        await events(make(upstream), ask_with(Tools((CLOCK,))))


@pytest.mark.parametrize(
    ("profile_tools", "config_tools", "expected"),
    [(True, True, True), (True, False, False), (False, True, False)],
)
def test_an_upstream_backend_supports_tools_when_profile_and_config_agree(
    tmp_path: Path, profile_tools: bool, config_tools: bool, expected: bool
) -> None:
    profile = (CONFIG_DIR / "models" / "qwen3-vl-2b-instruct.toml").read_text(encoding="utf-8")
    (tmp_path / "big.toml").write_text(
        profile.replace("tools = true", f"tools = {str(profile_tools).lower()}"), encoding="utf-8"
    )
    (tmp_path / "qwen3-vl-2b-instruct.toml").write_text(profile, encoding="utf-8")
    routing = (CONFIG_DIR / "routing.toml").read_text(encoding="utf-8")
    routing += (
        '\n[backends.big]\nprofile = "big"\nnames = ["big-vlm"]\n[backends.big.upstream]\n'
        f'model = "big-vlm"\nsupports_tools = {str(config_tools).lower()}\n'
    )
    (tmp_path / "routing.toml").write_text(routing, encoding="utf-8")
    router = CapabilityRouter.from_files(tmp_path / "routing.toml", tmp_path)
    backends = _backends(router, FakeAdapter())
    assert backends["big"].capabilities.supports_tools is expected
