"""The Responses API through the whole app with the FakeAdapter: the response object, streaming,
structured output, function calls, and every refusal as an OpenAI error naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.base import Capabilities, ResponseFormat, ToolCall
from adapters.testing import FakeAdapter, ToolAnswer
from tests.api.conftest import MODEL, ClientFactory, build_app, http_client, running
from tests.api.responses_support import (
    URL,
    answer,
    error_of,
    events,
    files,
    image_message,
    request,
    serve,
    stream_then_disconnect,
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PARIS = ToolCall("call_paris", "get_weather", '{"city": "Paris"}')


async def test_a_text_answer(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue("A red square.")
        body = request([image_message()], instructions="Answer briefly.", metadata={"k": "v"})
        response = await client.post(URL, json=body)
        parsed = answer(response)
        assert parsed.status == "completed"
        assert parsed.output_text == "A red square."
        assert parsed.id.startswith("resp_")
        assert parsed.instructions == "Answer briefly."
        assert parsed.metadata == {"k": "v"}
        assert response.json()["store"] is True  # OpenAI sends it; the SDK type lacks it
        assert parsed.usage is not None
        assert parsed.usage.output_tokens == 3
        assert parsed.usage.input_tokens > 80  # the image's 80 visual tokens count
        assert response.headers["x-gateway-task"]
        generation = adapter.requests[-1]
        assert [m.role for m in generation.messages] == ["system", "user"]
        assert generation.messages[0].content == ("Answer briefly.",)
        assert len(generation.images) == 1


async def test_a_streamed_answer(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue("One two three")
        streamed = events(await client.post(URL, json=request(stream=True)))
        kinds = [e.type for e in streamed]
        assert kinds[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert kinds.count("response.output_text.delta") == 3
        assert kinds[-1] == "response.completed"
        final = streamed[-1].response
        assert final.output_text == "One two three"
        assert "".join(e.delta for e in streamed if e.type.endswith("text.delta")) == (
            "One two three"
        )
        # Stored before the last event: it reads back as it was sent.
        stored = answer(await client.get(f"{URL}/{final.id}"))
        assert stored == final


async def test_the_token_limit_makes_it_incomplete(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue("one two three four")
        parsed = answer(await client.post(URL, json=request(max_output_tokens=2)))
        assert parsed.status == "incomplete"
        assert parsed.incomplete_details is not None
        assert parsed.incomplete_details.reason == "max_output_tokens"
        assert parsed.output_text == "one two"
        assert adapter.requests[-1].sampling.max_tokens == 2
        adapter.enqueue("one two three four")
        streamed = events(await client.post(URL, json=request(max_output_tokens=2, stream=True)))
        assert streamed[-1].type == "response.incomplete"


async def test_text_format_is_enforced_like_response_format(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "name": "count", "schema": schema, "strict": True}
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue('{"n": 3}')
        parsed = answer(await client.post(URL, json=request(text={"format": fmt})))
        assert parsed.output_text == '{"n": 3}'
        assert adapter.requests[-1].response_format == ResponseFormat("json_schema", schema, True)
        assert parsed.text is not None
        assert parsed.text.format is not None
        assert parsed.text.format.type == "json_schema"


async def test_function_calls(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue(ToolAnswer((PARIS,)))
        body = request("Weather in Paris?", tools=[WEATHER], tool_choice="required")
        parsed = answer(await client.post(URL, json=body))
        tools = adapter.requests[-1].tools
        assert tools is not None
        assert (tools.choice, tools.specs[0].name) == ("required", "get_weather")
        (call,) = parsed.output
        assert call.type == "function_call"
        assert (call.call_id, call.name, call.arguments) == (
            "call_paris",
            "get_weather",
            '{"city": "Paris"}',
        )
        # The client runs the function and answers with the whole history, as LangChain does.
        adapter.enqueue("It is sunny in Paris.")
        history = [
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": "call_paris", "output": "sunny"},
        ]
        parsed = answer(await client.post(URL, json=request(history, tools=[WEATHER])))
        assert parsed.output_text == "It is sunny in Paris."
        messages = adapter.requests[-1].messages
        assert [m.role for m in messages][-3:] == ["user", "assistant", "tool"]
        assert messages[-2].tool_calls == (PARIS,)
        assert (messages[-1].tool_call_id, messages[-1].content) == ("call_paris", ("sunny",))


async def test_streamed_function_calls(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue(ToolAnswer((PARIS,)))
        streamed = events(await client.post(URL, json=request(tools=[WEATHER], stream=True)))
        done = next(e for e in streamed if e.type == "response.function_call_arguments.done")
        assert (done.name, done.arguments) == ("get_weather", '{"city": "Paris"}')
        deltas = [e.delta for e in streamed if e.type == "response.function_call_arguments.delta"]
        assert len(deltas) > 1
        assert "".join(deltas) == PARIS.arguments
        final = streamed[-1].response
        assert [item.type for item in final.output] == ["function_call"]


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"background": True}, 400, "unsupported_parameter", "background"),
        ({"truncation": "auto"}, 400, "unsupported_parameter", "truncation"),
        ({"reasoning": {"effort": "high"}}, 400, "unsupported_parameter", "reasoning"),
        ({"include": ["file_search_call.results"]}, 400, "unsupported_parameter", "include"),
        ({"tools": [{"type": "web_search"}]}, 400, "unsupported_parameter", "tools[0].type"),
        ({"tools": [{"type": "file_search"}]}, 400, "unsupported_parameter", "tools[0].type"),
        ({"conversation": "conv_1"}, 400, "unsupported_parameter", "conversation"),
        ({"temperature": 5}, 400, "invalid_value", "temperature"),
        ({"model": "nope"}, 404, "model_not_found", "model"),
        ({"input": []}, 400, "invalid_value", "input"),
        ({"input": [{"role": "system", "content": "x"}]}, 400, "invalid_value", "input"),
        ({"input": [{"type": "reasoning"}]}, 400, "unsupported_parameter", "input[0].type"),
        (
            {"input": [{"role": "user", "content": "Hi"}, image_message() | {"role": "assistant"}]},
            400,
            "invalid_value",
            "input[1].content[1].image_url",
        ),
        (
            {"tool_choice": {"type": "function", "name": "other"}, "tools": [WEATHER]},
            400,
            "invalid_value",
            "tool_choice",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
            400,
            "invalid_value",
            "input[0].call_id",
        ),
        (
            {"previous_response_id": "resp_unknown"},
            404,
            "response_not_found",
            "previous_response_id",
        ),
    ],
)
async def test_refusals_name_the_field(
    make_client: ClientFactory,
    tmp_path: Path,
    fields: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        response = await client.post(URL, json=request(**fields))
        error_of(response, status, code, param)


async def test_bad_bodies(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        json_type = {"content-type": "application/json"}
        bad = await client.post(URL, content=b"{", headers=json_type)
        error_of(bad, 400, "invalid_json", None)
        plain = await client.post(URL, content=b"{}", headers={"content-type": "text/plain"})
        error_of(plain, 415, "unsupported_media_type", None)
        error_of(await client.post(URL, json={"input": "x"}), 400, "invalid_value", None)


async def test_a_long_input_is_context_length_exceeded(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        response = await client.post(URL, json=request("word " * 40000))
        error_of(response, 400, "context_length_exceeded", "input")


async def test_a_late_deadline_is_an_error_event_then_response_failed(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.15)
    async with make_client(adapter, files=files(tmp_path), server={"request_timeout_s": 0.4}) as (
        client,
        _,
    ):
        streamed = events(await client.post(URL, json=request(stream=True)))
        error, failed = streamed[-2:]
        assert (error.type, error.code) == ("error", "timeout")
        assert failed.type == "response.failed"
        assert failed.response.error.code == "server_error"
        assert adapter.active == 0
        error_of(
            await client.get(f"{URL}/{failed.response.id}"),
            404,
            "response_not_found",
            "response_id",
        )


async def test_a_client_disconnect_cancels_the_stream(tmp_path: Path) -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.05)
    adapter.enqueue(" ".join(["word"] * 200))  # 10 s unless cancelled
    app = build_app(adapter, files=files(tmp_path))
    async with running(app):
        await stream_then_disconnect(app, request(stream=True), b"word")
        assert (adapter.active, adapter.cancelled) == (0, 1)
        async with http_client(app) as client:  # its ticket was released: the next one runs
            assert (await client.post(URL, json=request())).status_code == 200
