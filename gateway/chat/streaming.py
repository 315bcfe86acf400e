"""Streaming frames: backend events become OpenAI's SSE chunks, usage and in-band errors.

``backend_events`` is where adapter failures become gateway errors (one translation point);
``Primed`` holds a stream whose first event already arrived, so everything before the first
token (queueing, the context check, prefill) fails as a plain JSON error and only later failures
become one ``data: {"error": ...}`` frame, as vLLM frames them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from adapters.base import (
    Adapter,
    AdapterError,
    BackendRejected,
    BackendUnavailable,
    Completion,
    Delta,
    Finish,
    InvalidResponseFormat,
    InvalidTools,
    PromptTooLong,
    StreamEvent,
    ToolCallDelta,
)
from gateway.chat import protocol as wire
from gateway.chat.tools import CallWatch, chunk_calls
from gateway.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    GatewayError,
    InternalError,
    InvalidValue,
    ServiceUnavailable,
)
from gateway.http.admission import Ticket
from gateway.observability.telemetry import current_record

if TYPE_CHECKING:
    from gateway.chat.service import PreparedChat

__all__ = (
    "Primed",
    "adapter_errors",
    "backend_events",
    "deadline_error",
    "sse_frames",
    "usage_of",
)

log = logging.getLogger("gateway.chat.streaming")

_encoder = msgspec.json.Encoder()


class Primed:
    """An event stream whose first event has already been received (and is replayed)."""

    def __init__(self, events: AsyncGenerator[StreamEvent, None], first: StreamEvent) -> None:
        self._events = events
        self._first: StreamEvent | None = first

    @classmethod
    async def start(cls, events: AsyncGenerator[StreamEvent, None]) -> Primed:
        try:
            return cls(events, await anext(events))
        except BaseException:
            await events.aclose()
            raise

    def __aiter__(self) -> Primed:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()


async def sse_frames(chat: PreparedChat, ticket: Ticket, events: Primed) -> AsyncIterator[str]:
    """The SSE ``data`` payloads of one chat completion, in OpenAI's order, then ``[DONE]``.

    A failure after the first frame is one in-band error frame; ``ticket`` is released at the end.
    """
    usage_field: Any = None if chat.include_usage else msgspec.UNSET

    def chunk(choices: list[wire.ChunkChoice], usage: Any = usage_field) -> str:
        return _encoder.encode(
            wire.ChatCompletionChunk(
                id=chat.id, created=chat.created, model=chat.model, choices=choices, usage=usage
            )
        ).decode()

    try:
        yield chunk([wire.ChunkChoice(0, wire.ChunkDelta(role="assistant", content=""))])
        async with asyncio.timeout_at(chat.deadline):
            async for event in events:
                if isinstance(event, Delta):
                    if event.text:
                        yield chunk([wire.ChunkChoice(0, wire.ChunkDelta(content=event.text))])
                    continue
                if isinstance(event, ToolCallDelta):
                    for piece in chunk_calls(event):
                        yield chunk([wire.ChunkChoice(0, wire.ChunkDelta(tool_calls=[piece]))])
                    continue
                yield chunk([wire.ChunkChoice(0, wire.ChunkDelta(), event.finish_reason)])
                if chat.include_usage:
                    yield chunk([], usage_of(event))
        yield "[DONE]"
    except TimeoutError:
        yield _error_frame(deadline_error())
    except GatewayError as exc:
        yield _error_frame(exc)
    except Exception:
        log.exception("stream failed")
        yield _error_frame(InternalError())
    finally:
        try:
            await events.aclose()
        finally:
            ticket.release()  # even when a disconnect's cancellation interrupts the close


async def backend_events(
    backend: Adapter, chat: PreparedChat, ticket: Ticket
) -> AsyncGenerator[StreamEvent, None]:
    """The backend's events for ``chat``, recorded (function calls counted too), with adapter
    failures translated to our errors (the one place they are)."""
    events = backend.stream(chat.generation)
    record = current_record()
    calls = CallWatch(chat.generation.tools, chat.model)
    try:
        with adapter_errors():
            async for event in events:
                if isinstance(event, Finish):
                    record.apply_usage(event.usage)
                    # Queue wait is the admission wait plus any wait inside the backend.
                    queued = ticket.waited_s + event.timings.get("queue", 0.0)
                    record.apply_timings({**event.timings, "queue": queued})
                    calls.finish()
                else:
                    record.delta()  # a call's pieces are generated output as much as text is
                    calls.see(event)
                yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # Adapter.stream is a generator


@contextlib.contextmanager
def adapter_errors() -> Iterator[None]:
    """Adapter failures become gateway errors: the one place they are translated."""
    try:
        yield
    except PromptTooLong as exc:
        raise ContextLengthExceeded(str(exc), param="messages") from None
    except InvalidResponseFormat as exc:
        raise InvalidValue(str(exc), param="response_format") from None
    except InvalidTools as exc:
        raise InvalidValue(str(exc), param="tools") from None
    except BackendRejected as exc:
        if exc.code == "context_length_exceeded":
            raise ContextLengthExceeded(str(exc), param="messages") from None
        raise InvalidValue(str(exc)) from None
    except BackendUnavailable as exc:
        if exc.timed_out:
            raise deadline_error() from None
        raise ServiceUnavailable(
            str(exc), code="server_overloaded", retry_after=exc.retry_after or 1
        ) from None
    except AdapterError as exc:
        log.error("backend failed: %s", exc)
        raise InternalError() from None


def deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded("The request did not complete within the deadline.")


def usage_of(finish: Finish | Completion) -> wire.Usage:
    u = finish.usage
    return wire.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=u.cached_tokens),
    )


def _error_frame(error: GatewayError) -> str:
    """An error after the stream started: one ``data: {"error": ...}`` frame, as vLLM does."""
    current_record().fail(error)
    return _encoder.encode(error.body()).decode()
