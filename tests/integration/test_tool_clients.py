"""Function calling from real clients against a real server with the tiny random model: the
openai SDK (plain, streamed, required, named, parallel, a round trip with a tool result and an
image), LangChain (``bind_tools``, ``with_structured_output(method="function_calling")``),
LlamaIndex (``OpenAILike.structured_predict``) and instructor (``Mode.TOOLS``).

The model's weights are random: a call is asked for with ``required`` or a named function, and
every call must still be well formed, with arguments that validate against the schema (the
engine constrains them), because clients parse them with no second chance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import instructor
import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.openai_like import OpenAILike
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall
from pydantic import BaseModel

from tests.integration.conftest import Server
from tests.integration.test_openai_clients import image_message, sdk

pytestmark = pytest.mark.integration

MAX_TOKENS = 96
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "A weather forecast.", "parameters": SCHEMA},
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
SCHEMAS = {"get_weather": SCHEMA, "get_time": TIME["function"]["parameters"]}  # type: ignore[index]
ASK = {"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}


class Weather(BaseModel):
    """A weather forecast request."""

    city: str
    days: int


def valid(name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    """The arguments, parsed, after checking them against the function's schema."""
    assert name in SCHEMAS, name
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(args, SCHEMAS[name])
    return dict(args)


def create(server: Server, model: Path, **fields: Any) -> Any:
    params: dict[str, Any] = {
        "model": str(model),
        "messages": [ASK],
        "tools": [WEATHER, TIME],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **fields,
    }
    return sdk(server).chat.completions.create(**params)


def test_required_call_non_streaming(server: Server, tiny_model_dir: Path) -> None:
    choice = create(server, tiny_model_dir, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.type == "function"
        assert call.id
        valid(call.function.name, call.function.arguments)


def test_streamed_calls_equal_the_non_streamed_ones(server: Server, tiny_model_dir: Path) -> None:
    full = create(server, tiny_model_dir, tool_choice="required").choices[0].message.tool_calls
    stream = create(
        server,
        tiny_model_dir,
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces: list[ChoiceDeltaToolCall] = [
        piece for c in chunks if c.choices for piece in c.choices[0].delta.tool_calls or ()
    ]
    calls: dict[int, dict[str, str]] = {}
    for piece in pieces:
        if piece.index not in calls:  # a call's first piece: id, type and name
            assert piece.id
            assert piece.type == "function"
            assert piece.function is not None
            assert piece.function.name
            calls[piece.index] = {"name": piece.function.name, "arguments": ""}
        else:
            assert piece.id is None
        calls[piece.index]["arguments"] += (piece.function and piece.function.arguments) or ""
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]
    assert chunks[-1].usage is not None
    assert full is not None
    streamed = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    assert streamed == [(c.function.name, c.function.arguments) for c in full]  # greedy
    for name, arguments in streamed:
        valid(name, arguments)


def test_a_named_function_is_the_one_called(server: Server, tiny_model_dir: Path) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    choice = create(server, tiny_model_dir, tool_choice=named).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["get_time"]
    valid("get_time", choice.message.tool_calls[0].function.arguments)  # type: ignore[index]


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_calls(server: Server, tiny_model_dir: Path, parallel: bool) -> None:
    message = (
        create(server, tiny_model_dir, tool_choice="required", parallel_tool_calls=parallel, seed=3)
        .choices[0]
        .message
    )
    calls = message.tool_calls or []
    assert calls
    if not parallel:
        assert len(calls) == 1
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        valid(call.function.name, call.function.arguments)


def test_auto_answers_with_text_or_valid_calls(server: Server, tiny_model_dir: Path) -> None:
    for seed in range(3):
        choice = create(server, tiny_model_dir, temperature=1.0, seed=seed).choices[0]
        if choice.message.tool_calls:
            # max_tokens may cut the answer after (or inside) a call: only a finished answer's
            # calls are sure to be whole.
            assert choice.finish_reason in ("tool_calls", "length")
            for call in choice.message.tool_calls if choice.finish_reason == "tool_calls" else ():
                valid(call.function.name, call.function.arguments)
        else:
            assert choice.finish_reason in ("stop", "length")
            assert isinstance(choice.message.content, str)


def test_round_trip_with_an_image_a_call_and_its_result(
    server: Server, tiny_model_dir: Path
) -> None:
    first = image_message("Which city is on this sign? Get its weather.")
    asked = create(server, tiny_model_dir, messages=[first], tool_choice="required")
    message = asked.choices[0].message
    assert message.tool_calls
    history: list[Any] = [first, message.model_dump(exclude_none=True)]
    for call in message.tool_calls:
        result = {"forecast": "sunny", "for": valid(call.function.name, call.function.arguments)}
        history.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    answer = create(server, tiny_model_dir, messages=history, tool_choice="none")
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    assert not choice.message.tool_calls
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > asked.usage.prompt_tokens  # type: ignore[union-attr]
    # A result for a call never made is refused, naming the message.
    with pytest.raises(openai.BadRequestError) as info:
        create(server, tiny_model_dir, messages=[first, history[2]])
    assert info.value.param == "messages[1].tool_call_id"


def langchain(server: Server, model: Path) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=str(model),
        max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
        temperature=0,
        max_retries=0,
    )


def test_langchain_bind_tools(server: Server, tiny_model_dir: Path) -> None:
    llm = langchain(server, tiny_model_dir).bind_tools([WEATHER, TIME], tool_choice="required")
    answer = llm.invoke(ASK["content"])
    assert not answer.invalid_tool_calls  # type: ignore[attr-defined]
    assert answer.tool_calls  # type: ignore[attr-defined]
    for call in answer.tool_calls:  # type: ignore[attr-defined]
        assert call["id"]
        valid(call["name"], call["args"])
    chunks = list(llm.stream(ASK["content"]))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk  # type: ignore[assignment]
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [  # type: ignore[attr-defined]
        (c["name"], c["args"])
        for c in answer.tool_calls  # type: ignore[attr-defined]
    ]


def test_langchain_structured_output_by_function_calling(
    server: Server, tiny_model_dir: Path
) -> None:
    llm = langchain(server, tiny_model_dir).with_structured_output(
        Weather, method="function_calling"
    )
    forecast = llm.invoke(ASK["content"])
    assert isinstance(forecast, Weather)
    valid("get_weather", forecast.model_dump())


def test_llamaindex_structured_predict(server: Server, tiny_model_dir: Path) -> None:
    llm = OpenAILike(
        model=str(tiny_model_dir),
        api_base=f"{server.base_url}/v1",
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=32768,
        max_tokens=MAX_TOKENS,
        temperature=0,
        max_retries=0,
    )
    prompt = PromptTemplate("Forecast request for {city}.")
    forecast = llm.structured_predict(Weather, prompt, city="Paris")
    assert isinstance(forecast, Weather)
    valid("get_weather", forecast.model_dump())


def test_instructor_tools_mode(server: Server, tiny_model_dir: Path) -> None:
    client = instructor.from_openai(sdk(server), mode=instructor.Mode.TOOLS)
    forecast = client.chat.completions.create(
        model=str(tiny_model_dir),
        response_model=Weather,
        messages=[ASK],  # type: ignore[list-item]
        max_tokens=MAX_TOKENS,
        temperature=0,
        max_retries=0,
    )
    assert isinstance(forecast, Weather)
    valid("get_weather", forecast.model_dump())
