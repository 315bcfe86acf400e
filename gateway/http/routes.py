"""Route handlers: decode, call one service method, choose JSON or SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.chat import protocol as wire
from gateway.chat.protocol import decode_request
from gateway.chat.service import ChatService
from gateway.errors import (
    ClientDisconnected,
    ModelNotFound,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from gateway.http import disconnect
from gateway.http.auth import caller_of
from gateway.http.openapi import ChatOperation
from gateway.state import GatewayState

__all__ = (
    "ChatController",
    "HealthController",
    "ModelsController",
    "check_serving",
    "read_json_body",
)


async def read_json_body(request: Request[Any, Any, Any], timeout_s: float) -> bytes:
    """The raw body of a JSON endpoint, read within ``timeout_s`` (408 after).

    A body that does not say it is JSON is refused (415): a browser may POST ``text/plain`` to
    any origin without a CORS preflight, so accepting it would let any web page drive the API.
    A client hanging up mid-upload is a 499, not a server error.
    """
    media_type, _ = request.content_type
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType(
            "The request body must be JSON, sent with 'Content-Type: application/json'."
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await request.body()
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None
    except InternalServerException:
        # Litestar's word for a client that hung up mid-upload.
        raise ClientDisconnected("The client closed the connection.") from None


def check_serving(gw: GatewayState) -> None:
    """503 unless the server is ready and not shutting down: checked before admission, so a
    generation endpoint refuses at once while the model loads or the process stops."""
    if gw.shutting_down:
        raise ServiceUnavailable("The server is shutting down.", code="shutting_down")
    if not gw.ready:
        raise ServiceUnavailable(
            "The model is still loading; retry shortly.", code="not_ready", retry_after=5
        )


class ChatController(Controller):
    path = "/v1/chat/completions"

    @post(
        status_code=200,
        summary="Create a chat completion (OpenAI Chat Completions API)",
        operation_class=ChatOperation,  # documents the body this handler decodes itself
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ChatService],
        gw: NamedDependency[GatewayState],
    ) -> Response[Any]:
        body = await read_json_body(request, gw.settings.server.body_timeout_s)
        chat_request = decode_request(body)
        check_serving(gw)
        ticket = service.admit()
        streaming = False
        try:
            async with disconnect.watch(request):
                chat = await service.prepare(chat_request, caller_of(request))
                if not chat.stream:
                    completion = await service.complete(chat, ticket)
                    return Response(completion, headers=chat.headers())
                payloads = await service.stream(chat, ticket)
                streaming = True
        finally:
            if not streaming:
                ticket.release()
        # From here Litestar watches for the disconnect; the payload iterator releases the
        # ticket when it ends, and the background task does too (idempotently) in case the
        # response is never iterated.
        return ServerSentEvent(
            _sse(payloads), headers=chat.headers(), background=BackgroundTask(ticket.release)
        )


async def _sse(payloads: AsyncIterator[str]) -> AsyncIterator[ServerSentEventMessage]:
    # OpenAI frames each event as "data: ...\n\n"; Litestar's default separator is "\r\n".
    async for payload in payloads:
        yield ServerSentEventMessage(data=payload, sep="\n")


class ModelsController(Controller):
    path = "/v1/models"

    @get(summary="List models")
    async def list_models(self, gw: NamedDependency[GatewayState]) -> wire.ModelList:
        return wire.ModelList(data=[gw.model_card(name) for name in gw.router.models()])

    @get("/{model_id:path}", summary="Retrieve a model")
    async def retrieve(
        self, model_id: FromPath[str], gw: NamedDependency[GatewayState]
    ) -> wire.Model:
        # The path parameter keeps its leading "/"; a served name may itself be an absolute
        # path (``--model /models/x``), and the router may collapse "//" in the URL.
        name = next(
            (n for n in (model_id.removeprefix("/"), model_id) if gw.router.resolve(n)), None
        )
        if name is None:
            raise ModelNotFound(
                f"The model '{model_id.removeprefix('/')[:64]}' does not exist.", param="model"
            )
        return gw.model_card(name)


class HealthController(Controller):
    path = "/"

    @get("/health", summary="Liveness: the process is up")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Readiness: the model is loaded and has answered a warm-up request")
    async def ready(self, gw: NamedDependency[GatewayState]) -> dict[str, str]:
        if gw.shutting_down:
            raise ServiceUnavailable("The server is shutting down.", code="shutting_down")
        if not gw.ready:
            raise ServiceUnavailable("The model is still loading.", code="not_ready", retry_after=5)
        return {"status": "ready"}
