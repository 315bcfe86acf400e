"""The whole app in-process with the FakeAdapter.

Requests go through ``httpx.ASGITransport`` on the test's own event loop (Litestar's
AsyncTestClient runs the app on a portal thread, which serialises concurrent requests), with
the app's real lifespan around them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from litestar import Litestar

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from gateway.app import create_app
from gateway.routing import CapabilityRouter, RouterConfig
from gateway.settings import Settings

MODEL = "fake-vlm"

ClientFactory = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient, FakeAdapter]]]


def settings_with(**sections: dict[str, Any]) -> Settings:
    base = Settings()
    return dataclasses.replace(
        base,
        **{
            name: dataclasses.replace(getattr(base, name), **values)
            for name, values in sections.items()
        },
    )


def build_app(adapter: FakeAdapter, **sections: dict[str, Any]) -> Litestar:
    router = CapabilityRouter.from_config(RouterConfig(), served_names={"local": (MODEL,)})
    return create_app(settings_with(**sections), {"local": adapter}, router)


@pytest.fixture
def make_client() -> ClientFactory:
    @asynccontextmanager
    async def factory(
        adapter: FakeAdapter | None = None, **sections: dict[str, Any]
    ) -> AsyncIterator[tuple[httpx.AsyncClient, FakeAdapter]]:
        adapter = adapter or FakeAdapter(Capabilities(model_id=MODEL))
        app = build_app(adapter, **sections)
        async with running(app), http_client(app) as client:
            yield client, adapter

    return factory


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """The app's lifespan, entered and left in one task of its own: pytest-asyncio tears
    fixtures down in another task, and anyio's cancel scopes must not cross tasks."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(hold())
    await asyncio.wait({task, asyncio.create_task(started.wait())}, return_when="FIRST_COMPLETED")
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await task


def http_client(app: Litestar) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as (test_client, _):
        yield test_client


@pytest.fixture
async def fake(make_client: ClientFactory) -> AsyncIterator[tuple[httpx.AsyncClient, FakeAdapter]]:
    async with make_client() as pair:
        yield pair


@pytest.fixture
async def tool_fake(
    make_client: ClientFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeAdapter]]:
    """A client and a fake backend that supports tools (function calling)."""
    adapter = FakeAdapter(Capabilities(model_id=MODEL, supports_tools=True))
    async with make_client(adapter) as pair:
        yield pair


async def stream_then_disconnect(
    app: Litestar, body: dict[str, Any], marker: bytes, path: str = "/v1/chat/completions"
) -> None:
    """POST ``body`` to ``path`` (the chat route by default) through raw ASGI and disconnect as
    soon as a response chunk contains ``marker``: a real client going away mid-stream."""
    payload = json.dumps(body).encode()
    seen = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await seen.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and marker in message.get("body", b""):
            seen.set()

    scope = {**chat_scope(), "path": path, "raw_path": path.encode()}
    await asyncio.wait_for(app(scope, receive, send), 5)  # type: ignore[arg-type]


def chat_scope() -> dict[str, Any]:
    """The ASGI scope of ``POST /v1/chat/completions`` from a loopback client, for tests that
    drive the app by hand (disconnects, slow bodies)."""
    path = "/v1/chat/completions"
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("localhost", 80),
        "headers": [(b"content-type", b"application/json"), (b"host", b"localhost")],
    }  # fmt: skip
