"""The openai SDK's own Responses client against the in-process app: create, stream (its
event accumulator), retrieve, list input items, chain and delete."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import FunctionToolParam, ResponseInputItemParam

from adapters.base import ToolCall
from adapters.testing import ToolAnswer
from tests.api.conftest import MODEL, ClientFactory
from tests.api.responses_support import image_message, serve


def sdk(client: httpx.AsyncClient) -> AsyncOpenAI:
    return AsyncOpenAI(base_url="http://localhost/v1", api_key="unused", http_client=client)


async def test_the_sdk_round_trip(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        api = sdk(client)
        adapter.enqueue("A red square.", "Red.")
        first = await api.responses.create(
            model=MODEL,
            input=[cast(ResponseInputItemParam, image_message())],
            instructions="Be brief.",
            max_output_tokens=16,
        )
        assert first.output_text == "A red square."
        async with api.responses.stream(
            model=MODEL, input="What colour?", previous_response_id=first.id
        ) as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            second = await stream.get_final_response()
        assert "".join(deltas) == second.output_text == "Red."
        assert (await api.responses.retrieve(second.id)).output_text == "Red."
        items = [item async for item in api.responses.input_items.list(second.id, limit=1)]
        assert [item.type for item in items] == ["message"] * 3  # paged one by one
        await api.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await api.responses.retrieve(first.id)
        assert caught.value.code == "response_not_found"


async def test_the_sdk_sees_function_calls(make_client: ClientFactory, tmp_path: Path) -> None:
    tool: FunctionToolParam = {
        "type": "function",
        "name": "now",
        "parameters": {"type": "object"},
        "strict": False,
    }
    async with serve(make_client, tmp_path) as (client, adapter):
        api = sdk(client)
        adapter.enqueue(ToolAnswer((ToolCall("call_1", "now", "{}"),)), "Noon.")
        first = await api.responses.create(model=MODEL, input="Time?", tools=[tool])
        (call,) = first.output
        assert call.type == "function_call"
        output: ResponseInputItemParam = {
            "type": "function_call_output",
            "call_id": call.call_id,
            "output": "12:00",
        }
        second = await api.responses.create(
            model=MODEL,
            input=[output],
            previous_response_id=first.id,
            tools=[tool],
        )
        assert second.output_text == "Noon."


async def test_the_sdk_raises_on_a_refusal(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk(client).responses.create(
                model=MODEL, input="Hi", tools=[{"type": "web_search"}]
            )
        assert caught.value.param == "tools[0].type"
