"""Stored responses: one record per response, owned by the caller's tenant.

A record holds the response object and the whole conversation that led to it (a chained
request's stored chain plus its own input), so a follow-up by ``previous_response_id`` is one
read: its history is the record's ``input`` then the response's ``output``. ``instructions``
are not part of it (OpenAI does not carry them over). Unknown, foreign, expired and unreadable
records are all one 404 (``ResponseNotFound``), so a caller cannot probe other keys' ids.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import msgspec
from msgspec import Struct

from gateway.errors import InvalidValue, ResponseNotFound
from gateway.files.store import Store, StoredResponse
from gateway.responses.protocol import Item, ItemList, ResponseObject

__all__ = ("Record", "delete", "history", "load", "page", "save")

log = logging.getLogger("gateway.responses.storage")


class Record(Struct, kw_only=True):
    version: int = 1
    response: ResponseObject
    input: list[Item]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


async def load(store: Store, owner: str, response_id: str, *, param: str) -> Record:
    """The caller's stored response ``response_id``; 404 naming ``param`` otherwise."""
    body = await store.get_response(owner, response_id, now=int(time.time()))
    if body is not None:
        try:
            return _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Written by an incompatible version: as good as gone, and not the caller's fault.
            log.warning("unreadable stored response %s: %s", response_id[:64], exc)
    raise ResponseNotFound(
        f"No response with id '{response_id[:64]}' was found (unknown, deleted, expired, or "
        "stored with another API key).",
        param=param,
    )


def history(record: Record) -> list[Item]:
    """The conversation a follow-up continues: the stored input, then the answer."""
    return [*record.input, *record.response.output]


async def save(
    store: Store, owner: str, response: ResponseObject, items: list[Item], retention_s: int
) -> None:
    """Keep ``response`` and its conversation for ``retention_s`` seconds (0: until deleted)."""
    body = _encoder.encode(Record(response=response, input=items))
    created = response.created_at
    expires = created + retention_s if retention_s > 0 else None
    await store.put_response(StoredResponse(response.id, owner, body, created, expires))


async def delete(store: Store, owner: str, response_id: str) -> None:
    if not await store.delete_response(owner, response_id):
        raise ResponseNotFound(
            f"No response with id '{response_id[:64]}' was found.", param="response_id"
        )


def page(
    items: list[Item], *, order: Literal["asc", "desc"], limit: int, after: str | None
) -> ItemList:
    """One page of a stored response's input items, as ``GET .../input_items`` lists them."""
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        index = next((i for i, item in enumerate(ordered) if item.id == after), None)
        if index is None:
            raise InvalidValue(
                f"'after' must be the id of an item of this response; '{after[:64]}' is not.",
                param="after",
            )
        start = index + 1
    data = ordered[start : start + limit]
    return ItemList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=start + limit < len(ordered),
    )
