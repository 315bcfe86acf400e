"""Connection-level limits of the HTTP server (uvicorn's h11 protocol), below the ASGI app.

uvicorn closes an idle keep-alive connection, but its timer stops at the first byte of the next
request: a client that then sends its headers one byte at a time holds the connection (and a
file descriptor) forever, and 200 such clients hold 200. ``HeaderDeadlineProtocol`` gives every
request ``header_timeout_s`` from the moment the connection is ready for it (opened, or the
previous response finished) until its headers are complete; then the connection is closed. The
body has its own deadline in the route (``server.body_timeout_s``, 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ("HeaderDeadlineProtocol", "protocol_with")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request's headers."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this keep-alive connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not before:
            self._disarm()  # a request's headers are complete: the body deadline takes over

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn should use (``uvicorn.Config(http=...)``)."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s}
    )
