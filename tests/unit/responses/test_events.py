"""The streamed events of a response, from scripted backend events: each one parsed by the
openai SDK's own types and accumulated by its stream helper, numbered from 0, in OpenAI's order;
a failure after the start is ``error`` then ``response.failed``; the ticket is always released
and the response stored before its last event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState

from adapters.base import Delta, Finish, StreamEvent, ToolCallDelta, Usage
from gateway.chat.service import PreparedChat
from gateway.chat.streaming import Primed
from gateway.errors import ServiceUnavailable
from gateway.http.admission import Admission
from gateway.responses.events import response_events
from gateway.responses.protocol import ResponseObject
from tests.unit.responses.support import sdk_event

USAGE = Usage(prompt_tokens=20, completion_tokens=4, cached_tokens=12)


async def script(*events: StreamEvent | Exception) -> AsyncGenerator[StreamEvent, None]:
    for event in events:
        await asyncio.sleep(0)
        if isinstance(event, Exception):
            raise event
        yield event


async def run(*events: StreamEvent | Exception, store: bool = True) -> dict[str, Any]:
    """Stream ``events``; the SDK-parsed events, what was stored, and the ticket's state."""
    admission = Admission(1, 1)
    ticket = admission.admit()
    await ticket.acquire_slot()
    loop = asyncio.get_running_loop()
    chat = cast(PreparedChat, SimpleNamespace(deadline=loop.time() + 10))
    shell = ResponseObject(id="resp_1", created_at=1, status="in_progress", model="m", store=store)
    kept: list[ResponseObject] = []
    sent: list[str] = []

    async def keep(response: ResponseObject) -> None:
        assert sent[-1] != "response.completed"  # stored before the last event
        kept.append(response)

    primed = await Primed.start(script(*events))
    frames: AsyncIterator[tuple[str, str]] = response_events(chat, shell, primed, ticket, keep)
    parsed = []
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    async for kind, data in frames:
        event = sdk_event.validate_python(json.loads(data))
        assert event.type == kind
        sent.append(kind)
        parsed.append(event)
        if kind not in ("error", "response.failed"):
            state.handle_event(event)
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    return {"events": parsed, "kinds": sent, "kept": kept, "admission": admission, "state": state}


async def test_a_text_answer_streams_in_openai_order() -> None:
    out = await run(Delta("Hello"), Delta(""), Delta(" world"), Finish("stop", USAGE))
    assert out["kinds"] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    events = out["events"]
    assert events[0].response.status == "in_progress"
    assert events[0].response.output == []
    assert events[6].text == "Hello world"
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == "Hello world"
    assert final.output[0].id == events[2].item.id == events[4].item_id
    assert final.usage.input_tokens_details.cached_tokens == 12
    assert final.usage.output_tokens_details.reasoning_tokens == 0
    assert out["state"]._completed_response.output_text == "Hello world"
    assert [r.id for r in out["kept"]] == ["resp_1"]
    assert out["admission"].admitted == 0  # the ticket was released


async def test_calls_stream_as_function_call_items() -> None:
    out = await run(
        Delta("Checking."),
        ToolCallDelta(0, id="call_a", name="get_weather"),
        ToolCallDelta(0, arguments='{"city": '),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, id="call_b", name="get_time", arguments="{}"),
        Finish("tool_calls", USAGE),
    )
    kinds = out["kinds"]
    assert kinds[2:9] == [
        "response.output_item.added",  # the message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # the first call
    ]
    assert kinds[9:] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = out["events"][8]
    assert (added.output_index, added.item.arguments, added.item.status) == (1, "", "in_progress")
    done = out["events"][11]
    assert (done.name, done.arguments, done.output_index) == ("get_weather", '{"city": "Paris"}', 1)
    final = out["events"][-1].response
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert [item.call_id for item in final.output[1:]] == ["call_a", "call_b"]
    assert len(out["kept"][0].output) == 3


async def test_a_silent_answer_is_one_empty_message() -> None:
    out = await run(Finish("stop", USAGE))
    final = out["events"][-1].response
    assert [item.type for item in final.output] == ["message"]
    assert final.output_text == ""


async def test_cut_by_the_token_limit_ends_with_response_incomplete() -> None:
    out = await run(Delta("Once"), Finish("length", USAGE))
    assert out["kinds"][-1] == "response.incomplete"
    final = out["events"][-1].response
    assert final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"
    assert out["events"][-2].item.status == "incomplete"


async def test_a_failure_after_the_start_is_an_error_then_response_failed() -> None:
    out = await run(Delta("Hel"), ServiceUnavailable("busy", code="server_overloaded"))
    assert out["kinds"][-2:] == ["error", "response.failed"]
    error, failed = out["events"][-2:]
    assert (error.code, error.message) == ("server_overloaded", "busy")
    assert failed.response.status == "failed"
    assert failed.response.error.code == "server_error"
    assert out["kept"] == []  # a failed response is not kept
    assert out["admission"].admitted == 0


async def test_an_unexpected_failure_is_an_internal_error() -> None:
    out = await run(Delta("x"), RuntimeError("boom"))
    error = out["events"][-2]
    assert error.code == "internal_error"
    assert "boom" not in error.message


@pytest.mark.parametrize("store", [True, False])
async def test_keep_is_handed_the_finished_response(store: bool) -> None:
    out = await run(Delta("x"), Finish("stop", USAGE), store=store)
    assert [r.status for r in out["kept"]] == ["completed"]
    assert out["kept"][0].store is store  # keep decides by the response's own flag
