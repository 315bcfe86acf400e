"""The PostgreSQL file store's connections: a small pool of psycopg connections.

The URL carries a password: it is kept out of every exception raised here (a malformed URL, a
failed connection).
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

__all__ = ("PostgresPool",)

_CONNECT_TIMEOUT_S = 10
"""Unless the URL says otherwise: libpq's default is to wait for ever, psycopg's two minutes."""
_IDLE_S = 60.0
"""A pooled connection idle longer is closed rather than reused: a firewall or proxy may have
dropped it silently meanwhile, and the request that found out would fail. (A server that ends
the connection itself, restarting or terminating it, says so on the socket: ``_has_input``.)"""


class PostgresPool:
    """At most ``size`` connections to the database at ``url`` (``postgresql://...`` or a libpq
    ``key=value`` string), a few kept open between calls (connecting, with SCRAM
    authentication, costs milliseconds). psycopg's own pool is a separate distribution
    (psycopg_pool); this is the little of it the store needs: a bound on connections, reuse of
    healthy idle ones."""

    def __init__(self, url: str, *, size: int) -> None:
        try:
            options = conninfo_to_dict(url)
        except Exception:  # the message would quote the string, password and all
            raise ValueError("postgres_url is not a valid PostgreSQL connection string") from None
        self._url = url
        extra = {} if "connect_timeout" in options else {"connect_timeout": _CONNECT_TIMEOUT_S}
        self._options: dict[str, Any] = extra
        self._size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[AsyncConnection[Any], float]] = []
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        if self._closed:
            raise RuntimeError("the PostgreSQL file store is closed")
        async with self._slots:
            conn = await self._take_idle() or await self._connect()
            try:
                yield conn
            finally:
                await self._give_back(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()

    async def _connect(self) -> AsyncConnection[Any]:
        try:
            # autocommit: a statement outside ``conn.transaction()`` commits at once, and a
            # connection goes back to the pool outside any transaction.
            return await AsyncConnection.connect(self._url, autocommit=True, **self._options)
        except Exception:  # libpq's messages may quote the host, user, even the conninfo
            raise RuntimeError("cannot connect to the PostgreSQL file store") from None

    async def _take_idle(self) -> AsyncConnection[Any] | None:
        deadline = time.monotonic() - _IDLE_S
        while self._idle:
            conn, since = self._idle.pop()  # the most recently used: likely still open
            if since >= deadline and not conn.closed and not _has_input(conn.fileno()):
                return conn
            await conn.close()
        return None

    async def _give_back(self, conn: AsyncConnection[Any]) -> None:
        # Anything but a clean idle state (a query cancelled half way, a lost server): discard.
        reusable = (
            not self._closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        if reusable and len(self._idle) < self._size:
            self._idle.append((conn, time.monotonic()))
        else:
            await conn.close()


def _has_input(fd: int) -> bool:
    """Whether an idle connection's socket has something to read: nothing should arrive between
    queries but the server's farewell (an error, then end of file) when it ends the session,
    on a restart or ``pg_terminate_backend``. Such a connection would fail its next query."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
