"""Bearer-key authentication for the API routes, and who the caller is.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` so neither the length nor the
content of a configured key leaks through timing. The header is normalised before the compare:
the scheme is case-insensitive and blanks around the token do not count, so ``bearer KEY``,
``Bearer  KEY`` and ``Bearer KEY `` are one caller.

``KeyGuard`` records the ``Caller`` in the connection's state: the configured key that matched
(by a stable id, never the key) and the socket peer. Rate limits and cache partitions key on it,
never on a header the client could vary freely (a forwarded address, an unconfigured token).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.errors import AuthenticationError

__all__ = ("Caller", "KeyGuard", "caller_of")

_STATE_KEY = "vlm_gateway_caller"


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as far as the server can tell."""

    key_id: str | None
    """A stable id of the configured API key that authenticated it (a digest prefix); None when
    the server has no keys."""
    peer: str
    """The socket peer address (never a forwarded header)."""

    @property
    def tenant(self) -> str:
        """Whose caches it may share: its key's, or the one shared partition without keys."""
        return f"key:{self.key_id}" if self.key_id else "shared"

    @property
    def rate_key(self) -> str:
        """Whose rate limit it spends: its key's, or its peer address's without keys."""
        return f"key:{self.key_id}" if self.key_id else f"peer:{self.peer}"


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The caller ``KeyGuard`` recorded (a peer-only caller where no guard ran)."""
    caller = connection.scope.get("state", {}).get(_STATE_KEY)
    return caller if isinstance(caller, Caller) else Caller(None, _peer(connection))


def _peer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else ""


class KeyGuard:
    """A Litestar guard accepting ``Authorization: Bearer <key>`` for any configured key (any
    request when none is configured), recording the ``Caller`` either way."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        # A coroutine: Litestar would run a plain function in its thread pool, for nothing.
        key_id = self._authenticate(connection.headers.get("authorization", ""))
        connection.scope.setdefault("state", {})[_STATE_KEY] = Caller(key_id, _peer(connection))

    def _authenticate(self, header: str) -> str | None:
        if not self._digests:
            return None
        scheme, _sep, token = header.strip().partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        # Compare against every key so the time does not depend on which one matched.
        matched: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(given, digest):
                matched = digest
        if scheme.lower() != "bearer" or matched is None:
            raise AuthenticationError()
        return matched.hex()[:16]
