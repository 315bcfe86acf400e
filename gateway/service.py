"""The chat completion service: inspect -> route -> prepare -> generate -> respond.

``ChatService.prepare`` does every check and every image fetch before a response starts, so a bad
request is always a plain JSON error, never a 200 stream. ``complete`` and ``stream`` then run
the generation under an admission ticket and the request deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from adapters.base import (
    Adapter,
    AdapterError,
    BackendRejected,
    BackendUnavailable,
    Delta,
    Finish,
    GenerationRequest,
    InvalidResponseFormat,
    PromptTooLong,
    ResponseFormat,
    SamplingParams,
    StreamEvent,
)
from gateway import metrics
from gateway import protocol as wire
from gateway.admission import Admission, Ticket
from gateway.conversation import parse_messages
from gateway.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    GatewayError,
    ImageError,
    InternalError,
    InvalidJSON,
    InvalidValue,
    ModelNotFound,
    ServiceUnavailable,
    TaskNotSupported,
    UnsupportedParameter,
)
from gateway.guard import ImageGuard, PreparedImage
from gateway.routing import CapabilityRouter, Decision
from gateway.settings import Settings
from gateway.telemetry import current_record

__all__ = ("ChatService", "PreparedChat", "decode_request")

log = logging.getLogger("gateway.service")

_decoder = msgspec.json.Decoder(wire.ChatCompletionRequest)
_encoder = msgspec.json.Encoder()


def decode_request(body: bytes) -> wire.ChatCompletionRequest:
    """Parse a request body; every failure is a 400 naming the offending field."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, found, path = str(exc).partition(" - at `$")
        param = path.rstrip("`").lstrip(".") if found else ""
        if not param:
            raise InvalidValue(f"Invalid request: {message}.") from None
        raise InvalidValue(f"Invalid value for '{param}': {message}.", param=param) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON(
            "The request body is not valid JSON (it must be UTF-8 encoded and nested at most "
            "a few hundred levels deep)."
        ) from None


@dataclass
class PreparedChat:
    """A validated request, ready to generate."""

    id: str
    model: str
    created: int
    generation: GenerationRequest
    decision: Decision
    images: list[PreparedImage]
    stream: bool
    include_usage: bool
    warnings: tuple[str, ...]
    deadline: float
    """Event-loop time by which the request must finish (504 ``timeout`` after)."""
    timings: dict[str, float] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        headers = {"x-gateway-task": self.decision.task, "x-gateway-backend": self.decision.backend}
        if self.warnings:
            headers["x-gateway-warnings"] = ",".join(self.warnings)
        return headers


class ChatService:
    def __init__(
        self,
        settings: Settings,
        backends: Mapping[str, Adapter],
        guard: ImageGuard,
        router: CapabilityRouter,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.backends = dict(backends)
        self.guard = guard
        self.router = router
        self.admission = admission

    async def prepare(self, request: wire.ChatCompletionRequest) -> PreparedChat:
        deadline = asyncio.get_running_loop().time() + self.settings.server.request_timeout_s
        record = current_record()
        record.model = request.model
        record.stream = bool(request.stream)
        unsupported = request.unsupported()
        if unsupported is not None:
            raise UnsupportedParameter(
                f"The '{unsupported}' parameter is not supported by this server.",
                param=unsupported,
            )
        if self.router.resolve(request.model) is None:
            raise ModelNotFound(
                f"The model '{request.model[:64]}' does not exist. GET /v1/models lists the "
                "models this server has.",
                param="model",
            )
        conversation = parse_messages(request.messages)
        record.prompt = conversation.last_user_text()
        record.images = len(conversation.images)
        fmt = _response_format(request.response_format)
        decision = self.router.route(
            conversation.views(), model=request.model, structured=fmt is not None
        )
        record.task, record.backend = decision.task, decision.backend
        metrics.count_router_action(decision.task, decision.action)
        headers = {"x-gateway-task": decision.task, "x-gateway-backend": decision.backend}
        if decision.action == "refuse":
            raise TaskNotSupported(
                decision.refusal or "This task is beyond the model.",
                param="messages",
                headers=headers,
            )
        if decision.backend not in self.backends:
            log.error("router chose unknown backend %r", decision.backend)
            raise InternalError()
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                images = await self.guard.prepare(
                    conversation.images,
                    max_pixels=decision.max_pixels,
                    text_heavy=decision.text_heavy,
                )
        except TimeoutError:
            raise _deadline() from None
        except ImageError as exc:
            exc.headers.update(headers)
            metrics.count_rejection(exc.code or "invalid_image")
            raise
        warnings = tuple(
            dict.fromkeys((*decision.warnings, *(w for i in images for w in i.report.warnings)))
        )
        record.add_warnings(warnings)
        generation = GenerationRequest(
            messages=conversation.messages([i.input for i in images], decision.system_prompt),
            sampling=self._sampling(request, decision),
            response_format=fmt,
            request_id=uuid.uuid4().hex,
        )
        return PreparedChat(
            id=f"chatcmpl-{generation.request_id}",
            model=request.model,
            created=int(time.time()),
            generation=generation,
            decision=decision,
            images=images,
            stream=bool(request.stream),
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            warnings=warnings,
            deadline=deadline,
            timings={"prepare": time.perf_counter() - started},
        )

    def _sampling(self, request: wire.ChatCompletionRequest, decision: Decision) -> SamplingParams:
        max_tokens = (
            request.max_completion_tokens
            or request.max_tokens
            or self.settings.server.max_tokens_default
        )
        stop = request.stop
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_first(request.temperature, decision.temperature, 1.0),
            top_p=_first(request.top_p, decision.top_p, 1.0),
            seed=request.seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        )

    def admit(self) -> Ticket:
        """Admit before work: taken before ``prepare`` so an overloaded server does no fetching
        or decoding, and before a stream starts so a 503 stays a plain JSON error."""
        return self.admission.admit()

    async def complete(self, chat: PreparedChat, ticket: Ticket) -> wire.ChatCompletion:
        """Generate the whole answer. The caller releases ``ticket``."""
        text: list[str] = []
        events = await self._open(chat, ticket)
        try:
            async with asyncio.timeout_at(chat.deadline):
                async for event in events:
                    if isinstance(event, Delta):
                        text.append(event.text)
                    else:
                        finish = event
        except TimeoutError:
            raise _deadline() from None
        finally:
            await events.aclose()
        return wire.ChatCompletion(
            id=chat.id,
            created=chat.created,
            model=chat.model,
            choices=[
                wire.Choice(
                    index=0,
                    message=wire.ResponseMessage(content="".join(text)),
                    finish_reason=finish.finish_reason,
                )
            ],
            usage=_usage(finish),
            warnings=list(chat.warnings) if chat.warnings else msgspec.UNSET,
        )

    async def stream(self, chat: PreparedChat, ticket: Ticket) -> AsyncIterator[str]:
        """Start generating and return the SSE ``data`` payloads in OpenAI's order.

        Everything up to the first generated event (queueing, the context check, prefill)
        happens before this returns, so those failures are plain JSON errors; later ones are
        one in-band error frame. The returned iterator releases ``ticket`` when it ends.
        """
        events = await self._open(chat, ticket)
        return self._frames(chat, ticket, events)

    async def _open(self, chat: PreparedChat, ticket: Ticket) -> _Primed:
        try:
            async with asyncio.timeout_at(chat.deadline):
                await ticket.acquire_slot()
                return await _Primed.start(self._events(chat, ticket))
        except TimeoutError:
            raise _deadline() from None

    async def _frames(
        self, chat: PreparedChat, ticket: Ticket, events: _Primed
    ) -> AsyncIterator[str]:
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
                    yield chunk([wire.ChunkChoice(0, wire.ChunkDelta(), event.finish_reason)])
                    if chat.include_usage:
                        yield chunk([], _usage(event))
            yield "[DONE]"
        except TimeoutError:
            yield _error_frame(_deadline())
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

    async def _events(
        self, chat: PreparedChat, ticket: Ticket
    ) -> AsyncGenerator[StreamEvent, None]:
        """The backend's events, with adapter failures translated to our errors."""
        events = self.backends[chat.decision.backend].stream(chat.generation)
        record = current_record()
        try:
            async for event in events:
                if isinstance(event, Delta):
                    record.delta()
                else:
                    record.apply_usage(event.usage)
                    # Queue wait is the admission wait plus any wait inside the backend.
                    queued = ticket.waited_s + event.timings.get("queue", 0.0)
                    record.apply_timings({**event.timings, "queue": queued})
                yield event
        except PromptTooLong as exc:
            raise ContextLengthExceeded(str(exc), param="messages") from None
        except InvalidResponseFormat as exc:
            raise InvalidValue(str(exc), param="response_format") from None
        except BackendRejected as exc:
            if exc.code == "context_length_exceeded":
                raise ContextLengthExceeded(str(exc), param="messages") from None
            raise InvalidValue(str(exc)) from None
        except BackendUnavailable as exc:
            if exc.timed_out:
                raise _deadline() from None
            raise ServiceUnavailable(
                str(exc), code="server_overloaded", retry_after=exc.retry_after or 1
            ) from None
        except AdapterError as exc:
            log.error("backend failed: %s", exc)
            raise InternalError() from None
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # Adapter.stream is a generator


class _Primed:
    """An event stream whose first event has already been received (and is replayed)."""

    def __init__(self, events: AsyncGenerator[StreamEvent, None], first: StreamEvent) -> None:
        self._events = events
        self._first: StreamEvent | None = first

    @classmethod
    async def start(cls, events: AsyncGenerator[StreamEvent, None]) -> _Primed:
        try:
            return cls(events, await anext(events))
        except BaseException:
            await events.aclose()
            raise

    def __aiter__(self) -> _Primed:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()


def _deadline() -> DeadlineExceeded:
    return DeadlineExceeded("The request did not complete within the deadline.")


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


def _usage(finish: Finish) -> wire.Usage:
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


def _response_format(fmt: wire.ResponseFormatWire | None) -> ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat("json_object")
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise InvalidValue(
            "response_format of type 'json_schema' needs 'json_schema.schema'.",
            param="response_format",
        )
    return ResponseFormat("json_schema", fmt.json_schema.schema, bool(fmt.json_schema.strict))
