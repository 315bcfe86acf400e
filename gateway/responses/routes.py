"""``/v1/responses``: the Responses API as a translation onto the chat completion pipeline.

``create`` mirrors ``ChatController.create`` (``gateway/http/routes.py``) step for step: decode,
refuse what cannot be honoured, readiness, admission, ``ChatService.prepare`` under the
disconnect watch, then ``complete`` or ``events``, with the same ticket discipline (released
here unless a stream took it over). What it adds: the stored conversation a
``previous_response_id`` names is read before admission (a 404 costs no queue place), and the
finished response is stored (``store``, true by default) after its ticket is released.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.chat.service import ChatService
from gateway.errors import InvalidValue
from gateway.files.store import Store, new_response_id
from gateway.http import disconnect
from gateway.http.auth import caller_of
from gateway.http.routes import check_serving, read_json_body
from gateway.responses import storage
from gateway.responses.events import Frame, response_events
from gateway.responses.items import decode_create
from gateway.responses.objects import completion_output, finished, started
from gateway.responses.params import response_params
from gateway.responses.protocol import DeletedResponse, Item, ItemList, ResponseObject
from gateway.responses.translate import check_supported, plan
from gateway.state import GatewayState

__all__ = ("ResponsesController",)

_MAX_PAGE = 100


class ResponsesController(Controller):
    path = "/v1/responses"

    @post(status_code=200, summary="Create a response (OpenAI Responses API)")
    async def create(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ChatService],
        gw: NamedDependency[GatewayState],
        store: NamedDependency[Store],
    ) -> Response[Any]:
        body = await read_json_body(request, gw.settings.server.body_timeout_s)
        create = decode_create(body)
        check_supported(create)
        check_serving(gw)
        caller = caller_of(request)
        history: list[Item] = []
        if create.previous_response_id is not None:
            record = await storage.load(
                store, caller.tenant, create.previous_response_id, param="previous_response_id"
            )
            history = storage.history(record)
        work = plan(create, history)
        ticket = service.admit()
        streaming = False
        try:
            with response_params(work.origins):
                async with disconnect.watch(request):
                    chat = await service.prepare(work.chat, caller)
                    response = started(create, chat, new_response_id(), chat.created)
                    if create.stream:
                        events = await service.events(chat, ticket)
                        streaming = True
                    else:
                        completion = await service.complete(chat, ticket)
        finally:
            if not streaming:
                ticket.release()
        keep = functools.partial(
            _keep, store, caller.tenant, work.items, gw.settings.files.response_retention_s
        )
        if not streaming:
            reason = completion.choices[0].finish_reason
            response = finished(response, completion_output(completion), reason, completion.usage)
            await keep(response)
            return Response(response, headers=chat.headers())
        # As in chat: the event iterator releases the ticket when it ends, and the background
        # task does too (idempotently) in case the response is never iterated.
        frames = response_events(chat, response, events, ticket, keep)
        return ServerSentEvent(
            _sse(frames), headers=chat.headers(), background=BackgroundTask(ticket.release)
        )

    @get("/{response_id:str}", summary="Retrieve a stored response")
    async def retrieve(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        store: NamedDependency[Store],
    ) -> Response[ResponseObject]:
        owner = caller_of(request).tenant
        record = await storage.load(store, owner, response_id, param="response_id")
        return Response(record.response)

    @delete("/{response_id:str}", status_code=200, summary="Delete a stored response")
    async def remove(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        store: NamedDependency[Store],
    ) -> Response[DeletedResponse]:
        await storage.delete(store, caller_of(request).tenant, response_id)
        return Response(DeletedResponse(id=response_id))

    @get("/{response_id:str}/input_items", summary="List a stored response's input items")
    async def input_items(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        store: NamedDependency[Store],
        order: FromQuery[str | None] = None,
        limit: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
    ) -> Response[ItemList]:
        # Query values arrive as text and are checked here, so a bad one is a 400 naming it.
        if order not in (None, "asc", "desc"):
            raise InvalidValue("'order' must be 'asc' or 'desc'.", param="order")
        count = _limit(limit)
        owner = caller_of(request).tenant
        record = await storage.load(store, owner, response_id, param="response_id")
        # OpenAI lists newest first by default.
        items = storage.page(
            record.input, order="asc" if order == "asc" else "desc", limit=count, after=after
        )
        return Response(items)


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= _MAX_PAGE:
        raise InvalidValue(f"'limit' must be an integer from 1 to {_MAX_PAGE}.", param="limit")
    return count


async def _keep(
    store: Store, owner: str, items: list[Item], retention_s: int, response: ResponseObject
) -> None:
    """Store a finished response unless its request said ``store: false``."""
    if response.store:
        await storage.save(store, owner, response, items, retention_s)


async def _sse(frames: AsyncIterator[Frame]) -> AsyncIterator[ServerSentEventMessage]:
    # OpenAI frames each event as "event: ...\ndata: ...\n\n"; Litestar's default is "\r\n".
    async for kind, data in frames:
        yield ServerSentEventMessage(data=data, event=kind, sep="\n")
