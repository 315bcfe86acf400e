"""Stored responses through the whole app: read back, deleted, listed, chained by
``previous_response_id`` (the client does not resend the image), kept per API key, and
``store: false`` keeping nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openai.types.responses import ResponseItemList

from adapters.base import ImageInput, ToolCall
from adapters.testing import ToolAnswer
from tests.api.conftest import ClientFactory
from tests.api.responses_support import (
    URL,
    answer,
    error_of,
    events,
    image_message,
    request,
    serve,
)

CALL = ToolCall("call_1", "get_time", "{}")
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}


async def test_read_back_list_and_delete(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        created = await client.post(URL, json=request("Hi", instructions="Be brief."))
        parsed = answer(created)
        path = f"{URL}/{parsed.id}"
        assert (await client.get(path)).json() == created.json()
        listed = await client.get(f"{path}/input_items")
        assert listed.status_code == 200, listed.text
        items = ResponseItemList.model_validate(listed.json())
        # The instructions are not an input item (OpenAI does not carry them over either).
        assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]
        deleted = await client.delete(path)
        assert deleted.status_code == 200
        assert deleted.json() == {"id": parsed.id, "object": "response", "deleted": True}
        for response in (
            await client.get(path),
            await client.delete(path),
            await client.get(f"{path}/input_items"),
        ):
            error_of(response, 404, "response_not_found", "response_id")


async def test_store_false_keeps_nothing(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        created = await client.post(URL, json=request(store=False))
        parsed = answer(created)
        assert created.json()["store"] is False
        error_of(await client.get(f"{URL}/{parsed.id}"), 404, "response_not_found", "response_id")
        follow = request("And?", previous_response_id=parsed.id)
        error_of(
            await client.post(URL, json=follow), 404, "response_not_found", "previous_response_id"
        )
        streamed = events(await client.post(URL, json=request(store=False, stream=True)))
        streamed_id = streamed[-1].response.id
        error_of(await client.get(f"{URL}/{streamed_id}"), 404, "response_not_found", "response_id")


async def test_a_follow_up_continues_without_resending_the_image(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue("A red square.", "Red.")
        first = answer(await client.post(URL, json=request([image_message()])))
        image = adapter.requests[-1].images[0]
        body = request("What colour is it?", previous_response_id=first.id, stream=True)
        second = events(await client.post(URL, json=body))
        generation = adapter.requests[-1]
        assert [m.role for m in generation.messages if m.role != "system"] == [
            "user",
            "assistant",
            "user",
        ]
        assert generation.messages[-2].content == ("A red square.",)
        (again,) = generation.images
        assert isinstance(again, ImageInput)
        assert again.digest == image.digest  # the same image, so the caches can answer
        second_id = second[-1].response.id
        stored = answer(await client.get(f"{URL}/{second_id}"))
        assert stored.previous_response_id == first.id
        # Its input items are the whole conversation, newest first by default.
        listed = (await client.get(f"{URL}/{second_id}/input_items")).json()
        roles = [item["role"] for item in listed["data"]]
        assert roles == ["user", "assistant", "user"]
        assert listed["data"][-1]["content"][1]["type"] == "input_image"


async def test_a_follow_up_answers_a_function_call(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    async with serve(make_client, tmp_path) as (client, adapter):
        adapter.enqueue(ToolAnswer((CALL,)), "It is noon.")
        first = answer(await client.post(URL, json=request("Time?", tools=[TIME])))
        output = {"type": "function_call_output", "call_id": "call_1", "output": "12:00"}
        body = request([output], tools=[TIME], previous_response_id=first.id)
        second = answer(await client.post(URL, json=body))
        assert second.output_text == "It is noon."
        messages = adapter.requests[-1].messages
        assert [m.role for m in messages][-3:] == ["user", "assistant", "tool"]
        assert messages[-2].tool_calls == (CALL,)


async def test_responses_belong_to_their_api_key(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    one, two = ({"Authorization": f"Bearer {key}"} for key in ("k1", "k2"))
    async with serve(make_client, tmp_path, server={"api_keys": ("k1", "k2")}) as (client, _):
        parsed = answer(await client.post(URL, json=request(), headers=one))
        path = f"{URL}/{parsed.id}"
        assert (await client.get(path, headers=one)).status_code == 200
        for response in (
            await client.get(path, headers=two),
            await client.get(f"{path}/input_items", headers=two),
            await client.delete(path, headers=two),
        ):
            error_of(response, 404, "response_not_found", "response_id")
        follow = request("And?", previous_response_id=parsed.id)
        foreign = await client.post(URL, json=follow, headers=two)
        error_of(foreign, 404, "response_not_found", "previous_response_id")
        assert (await client.get(path, headers=one)).status_code == 200  # still there


async def test_input_items_pages(make_client: ClientFactory, tmp_path: Path) -> None:
    async with serve(make_client, tmp_path) as (client, _):
        turns = [{"role": "user", "content": f"Line {i}"} for i in range(5)]
        parsed = answer(await client.post(URL, json=request(turns)))
        path = f"{URL}/{parsed.id}/input_items"
        everything = (await client.get(path, params={"order": "asc"})).json()
        ids = [item["id"] for item in everything["data"]]
        assert len(ids) == 5
        page = (await client.get(path, params={"limit": 2})).json()
        assert [item["id"] for item in page["data"]] == ids[::-1][:2]
        assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[4], ids[3], True)
        rest = (await client.get(path, params={"limit": 10, "after": ids[3]})).json()
        assert [item["id"] for item in rest["data"]] == ids[::-1][2:]
        assert rest["has_more"] is False
        refusals: list[tuple[dict[str, Any], str]] = [
            ({"limit": 0}, "limit"),
            ({"limit": "many"}, "limit"),
            ({"order": "up"}, "order"),
            ({"after": "msg_nope"}, "after"),
        ]
        for params, param in refusals:
            error_of(await client.get(path, params=params), 400, "invalid_value", param)
