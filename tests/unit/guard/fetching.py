"""Helpers shared by the remote-fetch tests (``test_guard_fetch*.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.guard import ImageGuard
from tests.unit.guard.conftest import Loopback, image_bytes, ref

Start = Callable[..., Awaitable[Loopback]]  # the ``loopback`` fixture: starts a server
PNG = image_bytes((96, 64))


async def fetch_one(guard: ImageGuard, url: str) -> Any:
    """The one prepared image of a request holding ``url``."""
    (prepared,) = await guard.prepare([ref(url)])
    return prepared
