"""The chat completion service: inspect -> route -> prepare -> generate -> respond.

``ChatService.prepare`` does every check and every image fetch before a response starts, so a bad
request is always a plain JSON error, never a 200 stream. ``complete`` and ``stream`` then run
the generation under an admission ticket and the request deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import msgspec

from adapters.base import (
    Adapter,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    collect,
)
from gateway.chat import protocol as wire
from gateway.chat.conversation import parse_messages
from gateway.chat.streaming import (
    Primed,
    adapter_errors,
    backend_events,
    deadline_error,
    sse_frames,
    usage_of,
)
from gateway.chat.tools import backend_tools, request_tools, response_message
from gateway.errors import (
    ImageError,
    InternalError,
    InvalidValue,
    ModelNotFound,
    TaskNotSupported,
    UnsupportedParameter,
)
from gateway.files.attach import Attachments
from gateway.guard.guard import ImageGuard, PreparedImage
from gateway.http.admission import Admission, Ticket
from gateway.http.auth import Caller
from gateway.observability import metrics
from gateway.observability.telemetry import current_record
from gateway.routing.router import CapabilityRouter, Decision
from gateway.settings import Settings

__all__ = ("ChatService", "PreparedChat")

log = logging.getLogger("gateway.chat.service")


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
        attachments: Attachments,
    ) -> None:
        self.settings = settings
        self.backends = dict(backends)
        self.guard = guard
        self.router = router
        self.admission = admission
        self.attachments = attachments

    async def prepare(
        self, request: wire.ChatCompletionRequest, caller: Caller | None = None
    ) -> PreparedChat:
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
        if conversation.files:
            async with _within(deadline):
                owner = caller.tenant if caller is not None else "shared"
                conversation = await self.attachments.expand(conversation, owner)
        record.prompt = conversation.last_user_text()
        record.images = len(conversation.images)
        fmt = _response_format(request.response_format)
        tools = request_tools(request)
        decision = self.router.route(
            conversation.views(),
            model=request.model,
            structured=fmt is not None,
            tools=tools is not None and bool(tools.callable),
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
        backend = self.backends[decision.backend]
        tools = backend_tools(tools, backend.capabilities, request.model)
        started = time.perf_counter()
        try:
            async with _within(deadline):
                images = await self.guard.prepare(
                    conversation.image_refs(),
                    max_pixels=decision.max_pixels,
                    text_heavy=decision.text_heavy,
                )
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
            cache_scope=self._cache_scope(request, caller),
            owner=caller.tenant if caller is not None else "",
            tools=tools,
        )
        # Before a generation slot is taken: a costly response_format or tools grammar compiles
        # here.
        async with _within(deadline):
            with adapter_errors():
                await backend.check(generation)
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

    def _cache_scope(self, request: wire.ChatCompletionRequest, caller: Caller | None) -> str:
        """The cache partition: the caller's key (one shared partition without keys, or when
        ``cache.share_across_keys``), narrowed by the client's salt (hashed: it is never kept)."""
        tenant = caller.tenant if caller is not None else "shared"
        if self.settings.cache.share_across_keys:
            tenant = "shared"
        salt = request.cache_salt or request.prompt_cache_key
        if not salt:
            return tenant
        return f"{tenant}|{hashlib.sha256(salt.encode()).hexdigest()[:32]}"

    def admit(self) -> Ticket:
        """Admit before work: taken before ``prepare`` so an overloaded server does no fetching
        or decoding, and before a stream starts so a 503 stays a plain JSON error."""
        return self.admission.admit()

    async def complete(self, chat: PreparedChat, ticket: Ticket) -> wire.ChatCompletion:
        """Generate the whole answer. The caller releases ``ticket``."""
        events = await self.events(chat, ticket)
        try:
            async with _within(chat.deadline):
                done = await collect(events)
        finally:
            await events.aclose()
        return wire.ChatCompletion(
            id=chat.id,
            created=chat.created,
            model=chat.model,
            choices=[
                wire.Choice(
                    index=0,
                    message=response_message(done),
                    finish_reason=done.finish_reason,
                )
            ],
            usage=usage_of(done),
            warnings=list(chat.warnings) if chat.warnings else msgspec.UNSET,
        )

    async def stream(self, chat: PreparedChat, ticket: Ticket) -> AsyncIterator[str]:
        """Start generating and return the SSE ``data`` payloads in OpenAI's order.

        Everything up to the first generated event (queueing, the context check, prefill)
        happens before this returns, so those failures are plain JSON errors; later ones are
        one in-band error frame. The returned iterator releases ``ticket`` when it ends.
        """
        events = await self.events(chat, ticket)
        return sse_frames(chat, ticket, events)

    async def events(self, chat: PreparedChat, ticket: Ticket) -> Primed:
        """Take a generation slot and start the backend: its events, the first one already
        received (so failures before the first token raise here). The caller closes them and
        releases ``ticket``."""
        async with _within(chat.deadline):
            await ticket.acquire_slot()
            backend = self.backends[chat.decision.backend]
            return await Primed.start(backend_events(backend, chat, ticket))


@contextlib.asynccontextmanager
async def _within(deadline: float) -> AsyncIterator[None]:
    """Run the block under the request's deadline (event-loop time); past it, 504 ``timeout``."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise deadline_error() from None


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


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
