"""Streaming: backend events become the Responses API's server-sent events, in OpenAI's order.

``response.created`` and ``response.in_progress`` open the stream; text is a ``message`` item
(``output_item.added``, ``content_part.added``, ``output_text.delta``..., ``output_text.done``,
``content_part.done``, ``output_item.done``); each function call is a ``function_call`` item
(``output_item.added``, ``function_call_arguments.delta``..., ``.done``, ``output_item.done``);
``response.completed`` (``response.incomplete`` when cut by ``max_output_tokens``) carries the
whole response with usage. Every event has a ``sequence_number`` from 0. There is no
``[DONE]``: OpenAI ends a Responses stream with its last event.

The stream starts only once the first backend event arrived (``ChatService.events``), so every
failure before it is a plain JSON error; a later one is an ``error`` event then
``response.failed``, as in chat's in-band error frame. The ticket is released when generation
ends, before the response is stored; a response is stored before its last event is sent, so a
client that reads it back at once finds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from msgspec import Struct

from adapters.base import Delta, ToolCallDelta
from gateway.chat.service import PreparedChat
from gateway.chat.streaming import Primed, deadline_error, usage_of
from gateway.errors import GatewayError, InternalError
from gateway.http.admission import Ticket
from gateway.observability.telemetry import current_record
from gateway.responses.items import new_item_id
from gateway.responses.objects import failed, finished, item_status
from gateway.responses.protocol import (
    FunctionCallItem,
    Item,
    ItemStatus,
    MessageItem,
    OutputText,
    ResponseObject,
)

__all__ = ("Frame", "response_events")

log = logging.getLogger("gateway.responses.events")

Frame = tuple[str, str]
"""An event's ``event:`` name and its ``data:`` JSON."""

_encoder = msgspec.json.Encoder()


class _Event(Struct, kw_only=True):
    type: str
    sequence_number: int = 0
    """Set by ``_Writer.frame`` as the event is sent."""


class _Lifecycle(_Event, kw_only=True):
    response: ResponseObject


class _OutputItem(_Event, kw_only=True):
    output_index: int
    item: Item


class _ContentPart(_Event, kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class _TextDelta(_Event, kw_only=True):
    type: str = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[object] = msgspec.field(default_factory=list)


class _TextDone(_Event, kw_only=True):
    type: str = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[object] = msgspec.field(default_factory=list)


class _ArgumentsDelta(_Event, kw_only=True):
    type: str = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class _ArgumentsDone(_Event, kw_only=True):
    type: str = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class _Error(_Event, kw_only=True):
    type: str = "error"
    code: str | None
    message: str
    param: str | None


class _Writer:
    """The events of one response: numbers them and follows the item being written."""

    def __init__(self) -> None:
        self.seq = 0
        self.output: list[Item] = []
        """Finished items, by output index (one item at most is open, after them)."""
        self._open: MessageItem | FunctionCallItem | None = None
        self._pieces: list[str] = []

    def frame(self, event: _Event) -> Frame:
        event.sequence_number, self.seq = self.seq, self.seq + 1
        return event.type, _encoder.encode(event).decode()

    def lifecycle(self, kind: str, response: ResponseObject) -> Frame:
        return self.frame(_Lifecycle(type=kind, response=response))

    def error(self, error: GatewayError) -> Frame:
        return self.frame(_Error(code=error.code, message=error.message, param=error.param))

    def text(self, text: str) -> list[Frame]:
        if not text:
            return []
        frames = [] if isinstance(self._open, MessageItem) else [*self._close(), *self._message()]
        assert self._open is not None
        self._pieces.append(text)
        return [*frames, self.frame(_TextDelta(delta=text, **self._at()))]

    def call(self, delta: ToolCallDelta) -> list[Frame]:
        frames: list[Frame] = []
        if delta.id is not None:
            frames += self._close()
            self._open = FunctionCallItem(
                id=new_item_id("fc"),
                status="in_progress",
                call_id=delta.id,
                name=delta.name or "",
                arguments="",
            )
            frames.append(self._added(self._open))
        if delta.arguments and isinstance(self._open, FunctionCallItem):
            self._pieces.append(delta.arguments)
            frames.append(self.frame(_ArgumentsDelta(delta=delta.arguments, **self._at())))
        return frames

    def finish(self, status: ItemStatus) -> list[Frame]:
        """Close the open item; an answer with no output at all is one empty message."""
        opened = self._message() if self._open is None and not self.output else []
        return [*opened, *self._close(status)]

    def _at(self) -> dict[str, Any]:
        """Where the open item is."""
        assert self._open is not None
        return {"item_id": self._open.id, "output_index": len(self.output)}

    def _added(self, item: Item) -> Frame:
        kind = "response.output_item.added"
        return self.frame(_OutputItem(type=kind, output_index=len(self.output), item=item))

    def _message(self) -> list[Frame]:
        item = MessageItem(
            id=new_item_id("msg"), status="in_progress", role="assistant", content=[]
        )
        self._open = item
        kind = "response.content_part.added"
        part = _ContentPart(type=kind, part=OutputText(text=""), **self._at())
        return [self._added(item), self.frame(part)]

    def _close(self, status: ItemStatus = "completed") -> list[Frame]:
        if self._open is None:
            return []
        at, item, self._open = self._at(), self._open, None
        joined, self._pieces = "".join(self._pieces), []
        frames: list[Frame] = []
        done: Item
        if isinstance(item, MessageItem):
            part = OutputText(text=joined)
            frames.append(self.frame(_TextDone(text=joined, **at)))
            kind = "response.content_part.done"
            frames.append(self.frame(_ContentPart(type=kind, part=part, **at)))
            done = msgspec.structs.replace(item, status=status, content=[part])
        else:
            frames.append(self.frame(_ArgumentsDone(name=item.name, arguments=joined, **at)))
            done = msgspec.structs.replace(item, status=status, arguments=joined)
        kind = "response.output_item.done"
        frames.append(
            self.frame(_OutputItem(type=kind, item=done, output_index=at["output_index"]))
        )
        self.output.append(done)
        return frames


async def response_events(
    chat: PreparedChat,
    response: ResponseObject,
    events: Primed,
    ticket: Ticket,
    keep: Callable[[ResponseObject], Awaitable[None]],
) -> AsyncIterator[Frame]:
    """The events of ``response``; ``keep`` stores the finished response (or does nothing).
    ``events`` is closed and ``ticket`` released when generation ends, however it ends."""
    writer = _Writer()
    yield writer.lifecycle("response.created", response)
    yield writer.lifecycle("response.in_progress", response)
    outcome: ResponseObject | None = None
    error: GatewayError | None = None
    try:
        async with asyncio.timeout_at(chat.deadline):
            async for event in events:
                if isinstance(event, Delta):
                    for frame in writer.text(event.text):
                        yield frame
                elif isinstance(event, ToolCallDelta):
                    for frame in writer.call(event):
                        yield frame
                else:
                    for frame in writer.finish(item_status(event.finish_reason)):
                        yield frame
                    outcome = finished(
                        response, writer.output, event.finish_reason, usage_of(event)
                    )
    except TimeoutError:
        error = deadline_error()
    except GatewayError as exc:
        error = exc
    except Exception:
        log.exception("stream failed")
        error = InternalError()
    finally:
        try:
            await events.aclose()
        finally:
            ticket.release()  # even when a disconnect's cancellation interrupts the close
    if error is None and outcome is not None:
        try:
            await keep(outcome)
        except Exception:
            log.exception("storing the response failed")
            error = InternalError()
        else:
            kind = "response.incomplete" if outcome.status == "incomplete" else "response.completed"
            yield writer.lifecycle(kind, outcome)
            return
    if error is None:
        log.error("the backend's stream ended without its finish event")
        error = InternalError()
    current_record().fail(error)
    yield writer.error(error)
    yield writer.lifecycle("response.failed", failed(response, error, writer.output))
