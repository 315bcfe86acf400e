"""The response object, its items and the stored record, checked against the openai SDK's own
types, and the storage rules: ownership, retention, paging."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from openai.types.responses import Response, ResponseItemList, ResponseOutputMessage

from adapters.base import GenerationRequest, SamplingParams
from gateway.chat import protocol as wire
from gateway.chat.service import PreparedChat
from gateway.chat.tool_protocol import FunctionCallWire, ToolCallWire
from gateway.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    ImageTooLarge,
    InvalidValue,
    RateLimited,
    ResponseNotFound,
)
from gateway.files.store import StoredResponse
from gateway.responses import storage
from gateway.responses.objects import completion_output, failed, failure_code, finished, started
from gateway.responses.protocol import ResponseObject
from gateway.responses.translate import plan
from tests.unit.responses.support import IMAGE, create, sdk_item

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}


def prepared(temperature: float = 0.5, top_p: float = 0.9) -> PreparedChat:
    sampling = SamplingParams(max_tokens=16, temperature=temperature, top_p=top_p)
    return cast(PreparedChat, SimpleNamespace(generation=GenerationRequest((), sampling)))


def completion(
    content: str | None, finish: str = "stop", calls: tuple[ToolCallWire, ...] = ()
) -> wire.ChatCompletion:
    message = wire.ResponseMessage(content=content, tool_calls=list(calls) or msgspec.UNSET)
    usage = wire.Usage(30, 5, 35, wire.PromptTokensDetails(cached_tokens=24))
    choice = wire.Choice(index=0, message=message, finish_reason=finish)
    return wire.ChatCompletion(id="c", created=1, model="m", choices=[choice], usage=usage)


def as_sdk(response: ResponseObject) -> Response:
    return Response.model_validate(msgspec.to_builtins(response))


def answer(chat: wire.ChatCompletion, **fields: Any) -> ResponseObject:
    request = create(input="Hi", **fields)
    shell = started(request, prepared(), "resp_1", 100)
    choice = chat.choices[0]
    return finished(shell, completion_output(chat), choice.finish_reason, chat.usage)


def test_a_text_answer_is_a_completed_response() -> None:
    response = as_sdk(
        answer(completion("Hello."), instructions="Be kind.", metadata={"k": "v"}, tools=[TOOL])
    )
    assert response.status == "completed"
    assert response.output_text == "Hello."
    assert response.completed_at is not None
    assert (response.temperature, response.top_p) == (0.5, 0.9)  # what generation used
    assert response.instructions == "Be kind."
    assert response.metadata == {"k": "v"}
    assert response.tools[0].type == "function"
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 24
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert (response.usage.input_tokens, response.usage.total_tokens) == (30, 35)


def test_calls_are_function_call_items_after_any_text() -> None:
    call = ToolCallWire(id="call_1", function=FunctionCallWire("f", '{"a": 1}'))
    response = as_sdk(answer(completion("Let me see.", "tool_calls", (call,)), tools=[TOOL]))
    message, function_call = response.output
    assert message.type == "message"
    assert function_call.type == "function_call"
    assert (function_call.call_id, function_call.name) == ("call_1", "f")
    assert function_call.arguments == '{"a": 1}'
    only = as_sdk(answer(completion(None, "tool_calls", (call,)), tools=[TOOL]))
    assert [item.type for item in only.output] == ["function_call"]


def test_an_empty_answer_is_still_a_message() -> None:
    response = as_sdk(answer(completion("")))
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == ""


def test_cut_by_the_token_limit_is_incomplete() -> None:
    response = as_sdk(answer(completion("Once upon", "length"), max_output_tokens=2))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.completed_at is None
    assert response.max_output_tokens == 2
    message = response.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert message.status == "incomplete"


def test_a_json_schema_format_and_named_tool_choice_are_echoed() -> None:
    fmt = {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}
    choice = {"type": "function", "name": "f"}
    response = as_sdk(
        answer(completion("{}"), text={"format": fmt}, tools=[TOOL], tool_choice=choice)
    )
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DeadlineExceeded("late"), "server_error"),
        (RateLimited("slow down"), "rate_limit_exceeded"),
        (ImageTooLarge("big"), "image_too_large"),
        (ContextLengthExceeded("long"), "invalid_prompt"),
    ],
)
def test_a_failed_response_has_an_sdk_error_code(error: Any, code: str) -> None:
    shell = started(create(input="Hi"), prepared(), "resp_1", 100)
    response = as_sdk(failed(shell, error, []))
    assert response.status == "failed"
    assert response.error is not None
    assert (response.error.code, response.error.message) == (code, error.message)
    assert failure_code(error) == code


class MemoryStore:
    """The stored-response half of ``Store``, in memory, with its ownership and expiry rules."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredResponse] = {}

    async def put_response(self, response: StoredResponse) -> None:
        self.rows[response.id] = response

    async def get_response(self, owner: str, response_id: str, *, now: int) -> bytes | None:
        row = self.rows.get(response_id)
        if row is None or row.owner != owner:
            return None
        return None if row.expires_at is not None and row.expires_at <= now else row.body

    async def delete_response(self, owner: str, response_id: str) -> bool:
        row = self.rows.get(response_id)
        return row is not None and row.owner == owner and self.rows.pop(response_id) is not None


def stored_answer() -> tuple[ResponseObject, list[Any]]:
    content = [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
    ]
    work = plan(create(input=[{"role": "user", "content": content}]))
    response = answer(completion("A cat."))
    response.created_at = int(time.time())
    return response, work.items


async def test_a_stored_response_reads_back_for_its_owner_only() -> None:
    store: Any = MemoryStore()
    response, items = stored_answer()
    await storage.save(store, "key:a", response, items, retention_s=60)
    record = await storage.load(store, "key:a", response.id, param="previous_response_id")
    assert record.response == response
    assert record.input == items
    assert store.rows[response.id].expires_at == response.created_at + 60
    for item in storage.history(record):
        sdk_item.validate_python(msgspec.to_builtins(item))
    with pytest.raises(ResponseNotFound) as caught:
        await storage.load(store, "key:b", response.id, param="previous_response_id")
    assert caught.value.param == "previous_response_id"
    with pytest.raises(ResponseNotFound):
        await storage.delete(store, "key:b", response.id)
    await storage.delete(store, "key:a", response.id)
    with pytest.raises(ResponseNotFound):
        await storage.load(store, "key:a", response.id, param="response_id")


async def test_retention_zero_keeps_until_deleted_and_garbage_reads_as_absent() -> None:
    store: Any = MemoryStore()
    response, items = stored_answer()
    await storage.save(store, "shared", response, items, retention_s=0)
    assert store.rows[response.id].expires_at is None
    store.rows["resp_bad"] = StoredResponse("resp_bad", "shared", b"{not json", 1, None)
    with pytest.raises(ResponseNotFound):
        await storage.load(store, "shared", "resp_bad", param="response_id")


def test_input_items_pages() -> None:
    items = plan(create(input=[{"role": "user", "content": str(i)} for i in range(5)])).items
    ids = [item.id for item in items]
    first = storage.page(items, order="desc", limit=2, after=None)
    listed = ResponseItemList.model_validate(msgspec.to_builtins(first))
    assert [item.id for item in listed.data] == ids[::-1][:2]
    assert (listed.first_id, listed.last_id, listed.has_more) == (ids[4], ids[3], True)
    rest = storage.page(items, order="desc", limit=10, after=ids[3])
    assert [item.id for item in rest.data] == ids[::-1][2:]
    assert not rest.has_more
    assert [i.id for i in storage.page(items, order="asc", limit=5, after=None).data] == ids
    empty = storage.page(items, order="asc", limit=5, after=ids[4])
    assert (empty.data, empty.first_id, empty.has_more) == ([], None, False)
    with pytest.raises(InvalidValue) as caught:
        storage.page(items, order="asc", limit=5, after="msg_unknown")
    assert caught.value.param == "after"
