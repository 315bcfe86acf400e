"""Stop work for a client that has gone away before its response started.

Litestar notices a disconnect only while it streams a response body. Before that (waiting in
the admission queue, fetching images, generating a non-streaming answer) nothing reads the ASGI
channel, so a client that left would keep its queue place and its generation. ``watch`` reads
the channel in the background and cancels the handler when ``http.disconnect`` arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request

from gateway.errors import ClientDisconnected
from gateway.observability.telemetry import current_record

__all__ = ("watch",)


@contextlib.asynccontextmanager
async def watch(request: Request[Any, Any, Any]) -> AsyncIterator[None]:
    """Run the block; if the client disconnects meanwhile, cancel it and raise
    ``ClientDisconnected``. The request body must have been read already."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def listen() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    listener = asyncio.create_task(listen())
    try:
        yield
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            current_record().cancelled = True
            raise ClientDisconnected("The client closed the connection.") from None
        raise
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
