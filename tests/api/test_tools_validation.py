"""Function calling refused where it must be: every bad tool, choice and message is a 400 naming
the field; a backend without tools refuses them by name; the tool-call series count."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from adapters.base import Capabilities, GenerationRequest, InvalidTools
from adapters.testing import FakeAdapter
from tests.api.conftest import MODEL, ClientFactory
from tests.api.test_chat import assert_error
from tests.api.test_metrics import delta, scrape
from tests.api.tool_support import (
    PARIS,
    TIME,
    URL,
    WEATHER,
    calls,
    ocr_content,
    tools_request,
)

Fake = tuple[httpx.AsyncClient, FakeAdapter]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL]}


def function(**fields: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", **fields}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [function(name="get weather")]}, "tools[0].function.name"),
        ({"tools": [function(name="")]}, "tools[0].function.name"),
        ({"tools": [function(name="x" * 65)]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [WEATHER, TIME, WEATHER]}, "tools[2].function.name"),
        ({"tools": [function(parameters={"type": "string"})]}, "tools[0].function.parameters"),
        ({"tools": [function(parameters=["a"])]}, "tools[0].function.parameters"),
        ({"tools": [function(description=3)]}, "tools[0].function.description"),
        ({"tools": [WEATHER] * 129}, "tools"),
        ({"tools": WEATHER}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [], "tool_choice": {"type": "function", "function": {"name": "f"}}},
            "tool_choice",
        ),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
async def test_bad_tools_and_choices_name_the_field(
    tool_fake: Fake, fields: dict[str, Any], param: str
) -> None:
    client, adapter = tool_fake
    assert_error(await client.post(URL, json=tools_request(**fields)), 400, "invalid_value", param)
    assert adapter.requests == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "tool", "content": "21C"}], "messages[0].tool_call_id"),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c", "content": "y"},
            ],
            "messages[1].tool_call_id",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "call_1", "content": "y"},
                ASKED,
            ],
            "messages[1].tool_call_id",
        ),
        (
            [{"role": "user", "content": "x"}, ASKED, {"role": "tool", "tool_call_id": "call_1"}],
            "messages[2].content",
        ),
        ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "messages[0].tool_calls"),
        (
            [{"role": "user", "content": "x"}, {**ASKED, "tool_calls": [{**CALL, "id": ""}]}],
            "messages[1].tool_calls[0].id",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {**ASKED, "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]},
            ],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [
                {"role": "user", "content": "x"},
                ASKED,
                {"role": "tool", "tool_call_id": "call_1", "content": ocr_content()},
            ],
            "messages[2].content[1].image_url",
        ),
    ],
)
async def test_bad_tool_messages_name_the_field(
    tool_fake: Fake, messages: list[dict[str, Any]], param: str
) -> None:
    client, adapter = tool_fake
    body = {**tools_request(), "messages": messages}
    assert_error(await client.post(URL, json=body), 400, "invalid_value", param)
    assert adapter.requests == []


async def test_legacy_function_calling_is_refused_by_name(tool_fake: Fake) -> None:
    client, _ = tool_fake
    legacy = {"role": "assistant", "content": None, "function_call": {"name": "f"}}
    body = {**tools_request(), "messages": [{"role": "user", "content": "x"}, legacy]}
    response = await client.post(URL, json=body)
    assert_error(response, 400, "unsupported_parameter", "messages[1].function_call")


async def test_a_backend_without_tools_refuses_them_by_name(make_client: ClientFactory) -> None:
    async with make_client() as (client, adapter):  # the default fake: no tool support
        response = await client.post(URL, json=tools_request(ocr_content()))
        error = assert_error(response, 400, "unsupported_parameter", "tools")
        assert "function calling" in error["message"]
        required = await client.post(URL, json=tools_request(tool_choice="required"))
        assert_error(required, 400, "unsupported_parameter", "tools")
        assert adapter.requests == []
        # Nothing could be called: the request is answered as text, without the tools.
        described = await client.post(URL, json=tools_request(tool_choice="none"))
        assert described.status_code == 200
        assert adapter.requests[-1].tools is None


async def test_a_stream_that_cannot_start_is_a_plain_json_error(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        response = await client.post(URL, json=tools_request(stream=True))
        assert_error(response, 400, "unsupported_parameter", "tools")


async def test_tool_call_series_count_calls_malformed_and_missing(tool_fake: Fake) -> None:
    client, adapter = tool_fake
    name = "vlm_gateway_tool_calls_total"
    before = await scrape(client)
    adapter.enqueue(
        calls(PARIS, PARIS),
        'I will call it: <tool_call>\n{"name": "get_weather", "arguments": {"city"',
        "No call, just text.",
        "A <tool_call> in an answer without tools is no malformed call.",
    )
    await client.post(URL, json=tools_request())
    await client.post(URL, json=tools_request(stream=True))
    await client.post(URL, json=tools_request(tool_choice="required"))
    await client.post(URL, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    after = await scrape(client)
    assert delta(before, after, name, model=MODEL, result="call") == 2
    assert delta(before, after, name, model=MODEL, result="malformed") == 1
    assert delta(before, after, name, model=MODEL, result="missing") == 1


async def test_tools_the_engine_cannot_enforce_are_a_400_naming_tools(
    make_client: ClientFactory,
) -> None:
    class Strict(FakeAdapter):
        async def check(self, request: GenerationRequest) -> None:
            if request.tools is not None:
                raise InvalidTools("tool 'get_weather' parameters are not a valid JSON schema")

    async with make_client(Strict(Capabilities(model_id=MODEL, supports_tools=True))) as (c, a):
        error = assert_error(await c.post(URL, json=tools_request()), 400, "invalid_value", "tools")
        assert "get_weather" in error["message"]
        assert a.requests == []
