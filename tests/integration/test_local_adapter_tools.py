"""LocalVLMAdapter function calling on the tiny random Qwen3-VL: forced calls validate against
their schemas, ``auto`` gives text or valid calls, ``none`` never calls, a tool round trip with
an image renders and generates, and events stream in order."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import torch
from transformers import LogitsProcessor

from adapters.base import (
    Completion,
    Delta,
    Finish,
    GenerationRequest,
    InvalidTools,
    Message,
    SamplingParams,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Tools,
    ToolSpec,
    collect,
)
from adapters.local import LocalVLMAdapter, toolgrammar
from tests.integration.local_adapter_support import CONVERSATIONS, image

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days"],
    },
)
LOOKUP = ToolSpec(
    "lookup",
    "Find objects in the image",
    {
        "type": "object",
        "properties": {"labels": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["labels"],
    },
)
CLOCK = ToolSpec("get_time", "The time now")
SPECS = (WEATHER, LOOKUP, CLOCK)


def ask(
    tools: Tools,
    messages: list[Message] | None = None,
    max_tokens: int = 96,
    seed: int | None = None,
) -> GenerationRequest:
    """Greedy without ``seed``; sampled at temperature 1 with it."""
    temperature = 0.0 if seed is None else 1.0
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    messages = messages or CONVERSATIONS["image"]
    return GenerationRequest(messages=tuple(messages), sampling=params, tools=tools)


def check_calls(done: Completion, tools: Tools) -> None:
    specs = {s.name: s for s in tools.callable}
    assert done.tool_calls
    for call in done.tool_calls:
        assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
        jsonschema.validate(json.loads(call.arguments), specs[call.name].parameters or {})
    assert len({c.id for c in done.tool_calls}) == len(done.tool_calls)
    assert done.finish_reason == "tool_calls"


class Boost(LogitsProcessor):
    """Raises ``token``'s logit at the given completion steps (all steps when None)."""

    def __init__(self, token: int, steps: set[int] | None = None) -> None:
        self.token, self.steps, self.prompt = token, steps, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.prompt = self.prompt or int(input_ids.shape[1])
        if self.steps is None or int(input_ids.shape[1]) - self.prompt in self.steps:
            scores[:, self.token] += 1000.0
        return scores


def boost_call_token(
    monkeypatch: pytest.MonkeyPatch, adapter: LocalVLMAdapter, steps: set[int] | None
) -> None:
    """Make the random model start a call at ``steps``: a booster before the real processors."""
    real = toolgrammar.tool_processors
    token = adapter._processor.tokenizer.convert_tokens_to_ids("<tool_call>")

    def processors(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return (Boost(token, steps), *real(*args, **kwargs))

    monkeypatch.setattr(toolgrammar, "tool_processors", processors)


async def test_the_local_engine_supports_tools(adapter: LocalVLMAdapter) -> None:
    assert adapter.capabilities.supports_tools


@pytest.mark.parametrize(
    "tools",
    [
        Tools(SPECS, "required", parallel=False),
        Tools(SPECS, "required", parallel=True),
        Tools(SPECS, "function", "lookup"),
    ],
    ids=["required", "parallel", "named"],
)
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
async def test_forced_calls_validate(
    adapter: LocalVLMAdapter, tools: Tools, seed: int | None
) -> None:
    done = await collect(adapter.stream(ask(tools, seed=seed)))
    assert done.text == ""
    check_calls(done, tools)
    if not tools.parallel:
        assert len(done.tool_calls) == 1
    if tools.choice == "function":
        assert {c.name for c in done.tool_calls} == {"lookup"}


async def test_a_small_budget_still_ends_in_a_complete_call(adapter: LocalVLMAdapter) -> None:
    tools = Tools((WEATHER,), "required")
    for seed in (1, 2):
        done = await collect(adapter.stream(ask(tools, max_tokens=56, seed=seed)))
        check_calls(done, tools)


@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4])
async def test_auto_gives_text_or_valid_calls(adapter: LocalVLMAdapter, seed: int | None) -> None:
    tools = Tools(SPECS, "auto")
    done = await collect(adapter.stream(ask(tools, max_tokens=48, seed=seed)))
    if done.tool_calls:
        check_calls(done, tools)
    else:
        assert done.finish_reason in ("stop", "length")


async def test_auto_constrains_a_call_the_model_starts(
    adapter: LocalVLMAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    boost_call_token(monkeypatch, adapter, {3})
    tools = Tools(SPECS, "auto", parallel=False)
    for seed in (None, 5, 6):
        events = [e async for e in adapter.stream(ask(tools, max_tokens=128, seed=seed))]
        kinds = [type(e).__name__ for e in events]
        # Text first, then the call, then the finish: nothing after a call when not parallel.
        assert kinds[-2:] == ["ToolCallDelta", "Finish"], kinds
        assert set(kinds[:-2]) <= {"Delta"}
        text = "".join(e.text for e in events if isinstance(e, Delta))
        assert "<tool_call>" not in text
        done = await collect(_replay(events))
        check_calls(done, tools)
        assert done.usage.completion_tokens > 3


async def test_none_never_calls(adapter: LocalVLMAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    boost_call_token(monkeypatch, adapter, None)  # wanted at every step: still banned
    for seed in (None, 7):
        done = await collect(adapter.stream(ask(Tools(SPECS, "none"), max_tokens=24, seed=seed)))
        assert not done.tool_calls
        assert "<tool_call>" not in done.text
        assert done.finish_reason in ("stop", "length")


async def test_tool_result_round_trip_with_an_image(adapter: LocalVLMAdapter) -> None:
    call = ToolCall("call_" + "0" * 24, "lookup", '{"labels": ["cat"]}')
    messages = [
        Message("system", ("Use the tools.",)),
        Message("user", (image(320, 256, 4), "What is in the picture?")),
        Message("assistant", ("",), tool_calls=(call,)),
        Message("tool", ('{"found": ["cat", "mat"]}',), tool_call_id=call.id),
    ]
    for tools in (Tools(SPECS, "auto"), Tools(SPECS, "required")):
        done = await collect(adapter.stream(ask(tools, messages, max_tokens=64)))
        assert done.usage.image_tokens == 80
        if tools.choice == "required":
            check_calls(done, tools)
    plain = await collect(adapter.stream(ask(Tools(SPECS, "none"), messages[:2], max_tokens=4)))
    assert done.usage.prompt_tokens > plain.usage.prompt_tokens


async def test_streaming_order_for_parallel_calls(adapter: LocalVLMAdapter) -> None:
    tools = Tools(SPECS, "required", parallel=True)
    events = [e async for e in adapter.stream(ask(tools, seed=11))]
    assert isinstance(events[-1], Finish)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [c.index for c in calls] == list(range(len(calls)))
    assert all(c.id and c.name for c in calls)
    assert not [e for e in events if isinstance(e, Delta)]


async def test_invalid_tools_are_refused_before_generating(adapter: LocalVLMAdapter) -> None:
    broken = ToolSpec("broken", parameters={"type": "object", "properties": {"a": {"type": "x"}}})
    with pytest.raises(InvalidTools, match="'broken'"):
        await adapter.check(ask(Tools((broken,), "required")))
    with pytest.raises(InvalidTools, match="no function may be called"):
        await adapter.check(ask(Tools(SPECS, "function", "missing")))
    assert adapter.worker.pending == 0


async def _replay(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event
