"""Function calling through the whole app with the FakeAdapter: what the backend is handed, and
the response shapes, checked field by field and parsed with the openai SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import httpx
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
)

from adapters.base import Message, ToolCall, Tools, ToolSpec
from adapters.testing import FakeAdapter
from tests.api.tool_support import (
    CLOCK,
    PARIS,
    URL,
    WEATHER,
    calls,
    ocr_content,
    sse_chunks,
    tools_request,
)

Fake = tuple[httpx.AsyncClient, FakeAdapter]


def known_fields(raw: dict[str, Any], model: type[Any]) -> None:
    """Every key we send is a field of the SDK's type (nothing OpenAI would not send)."""
    assert set(raw) <= set(model.model_fields), set(raw) - set(model.model_fields)


async def test_the_backend_gets_the_tools_and_how_to_use_them(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    response = await client.post(URL, json=tools_request())
    assert response.status_code == 200, response.text
    weather = WEATHER["function"]
    assert adapter.requests[-1].tools == Tools(
        (
            ToolSpec("get_weather", weather["description"], weather["parameters"]),
            ToolSpec("get_time", "", {"type": "object"}),
        ),
        choice="auto",
        parallel=True,
    )
    named = {"type": "function", "function": {"name": "get_time"}}
    for fields, choice, function, parallel in [
        ({"tool_choice": "required"}, "required", None, True),
        ({"tool_choice": named, "parallel_tool_calls": False}, "function", "get_time", False),
        ({"tool_choice": "none"}, "none", None, True),
    ]:
        assert (await client.post(URL, json=tools_request(**fields))).status_code == 200
        tools = adapter.requests[-1].tools
        assert tools is not None
        assert (tools.choice, tools.function, tools.parallel) == (choice, function, parallel)


async def test_no_tools_means_none_for_the_backend(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    body = {**tools_request(tool_choice="auto"), "tools": []}
    assert (await client.post(URL, json=body)).status_code == 200
    assert adapter.requests[-1].tools is None


async def test_a_call_answer_is_openai_shaped(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    adapter.enqueue(calls(PARIS))
    response = await client.post(URL, json=tools_request())
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
            }
        ],
    }
    parsed = ChatCompletion.model_validate(body)
    call = parsed.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}
    known_fields(choice["message"]["tool_calls"][0], ChatCompletionMessageFunctionToolCall)
    assert body["usage"]["completion_tokens"] > 0


async def test_text_before_parallel_calls_is_the_content(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    adapter.enqueue(calls(PARIS, CLOCK, text="Let me check."))
    body = (await client.post(URL, json=tools_request())).json()
    message = ChatCompletion.model_validate(body).choices[0].message
    assert message.content == "Let me check."
    assert [(c.id, c.function.name) for c in message.tool_calls or []] == [  # type: ignore[union-attr]
        ("call_paris", "get_weather"),
        ("call_clock", "get_time"),
    ]


async def test_a_text_answer_has_no_tool_calls_field(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    adapter.enqueue("It is sunny.")
    choice = (await client.post(URL, json=tools_request())).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is sunny.", "refusal": None}
    assert choice["finish_reason"] == "stop"


async def test_streamed_calls_are_framed_exactly_as_openai_frames_them(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    adapter.enqueue(calls(PARIS, CLOCK, text="Checking."))
    body = tools_request(stream=True, stream_options={"include_usage": True})
    chunks = sse_chunks(await client.post(URL, json=body))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Checking."}
    pieces = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert all(len(p) == 1 for p in pieces)  # one piece per chunk, as OpenAI sends them
    assert pieces[0][0] == {
        "index": 0,
        "id": "call_paris",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert pieces[1][0] == {"index": 0, "function": {"arguments": '{"city":'}}
    for piece in (p[0] for p in pieces):
        known_fields(piece, ChoiceDeltaToolCall)
    assembled: dict[int, dict[str, str]] = {}
    for piece in (p[0] for p in pieces):
        call = assembled.setdefault(piece["index"], {"id": "", "name": "", "arguments": ""})
        call["id"] += piece.get("id", "")
        call["name"] += piece["function"].get("name", "")
        call["arguments"] += piece["function"].get("arguments", "")
    assert assembled == {
        0: {"id": "call_paris", "name": "get_weather", "arguments": PARIS.arguments},
        1: {"id": "call_clock", "name": "get_time", "arguments": "{}"},
    }
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    assert finish[0]["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "tool_calls",
        "logprobs": None,
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_a_round_trip_with_an_image_a_call_and_its_result(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    adapter.enqueue("The sign says Paris; it is 21 degrees there.")
    messages = [
        {"role": "user", "content": ocr_content()},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_paris",
            "content": [{"type": "text", "text": "21C"}],
        },
    ]
    response = await client.post(URL, json={**tools_request(), "messages": messages})
    assert response.status_code == 200, response.text
    got = adapter.requests[-1].messages
    assert [m.role for m in got] == ["user", "assistant", "tool"]  # no task instruction
    assert got[1] == Message(
        "assistant", (), tool_calls=(ToolCall("call_paris", "get_weather", '{"city": "Paris"}'),)
    )
    assert got[2] == Message("tool", ("21C",), tool_call_id="call_paris")
    assert len(adapter.requests[-1].images) == 1


async def test_tools_keep_the_task_and_budget_but_get_no_task_instruction(
    tool_fake: Fake,
) -> None:
    client, adapter = tool_fake
    plain = await client.post(URL, json={**tools_request(ocr_content()), "tools": None})
    with_tools = await client.post(URL, json=tools_request(ocr_content()))
    await client.post(URL, json=tools_request(ocr_content(), tool_choice="none"))
    first, second, third = adapter.requests[-3:]
    assert plain.headers["x-gateway-task"] == with_tools.headers["x-gateway-task"] == "ocr"
    assert first.messages[0].role == "system"  # the OCR instruction
    assert [m.role for m in second.messages] == ["user"]
    assert first.images[0].size == second.images[0].size  # the same pixel budget
    assert first.sampling.temperature == second.sampling.temperature == 0.0
    assert third.messages[0] == first.messages[0]  # nothing can be called: text, instructed


async def test_a_call_cut_by_max_tokens_finishes_length(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    adapter.enqueue(calls(PARIS))
    body = (await client.post(URL, json=tools_request(max_tokens=2))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"  # the client sees the call was cut
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == PARIS.arguments[:8]
