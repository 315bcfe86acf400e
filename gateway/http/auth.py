"""Bearer-key authentication for the API routes.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` so neither the length nor the
content of a configured key leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.errors import AuthenticationError

__all__ = ("KeyGuard",)


class KeyGuard:
    """A Litestar guard accepting ``Authorization: Bearer <key>`` for any configured key."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not self._digests:
            return
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        # Compare against every key so the time does not depend on which one matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        if scheme.lower() != "bearer" or not matched:
            raise AuthenticationError()
