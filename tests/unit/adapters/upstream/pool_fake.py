"""Emulated replicas of an OpenAI-compatible engine for pool tests (one ``httpx.MockTransport``).

``Replicas`` answers for every ``http://127.0.0.1:<port>/v1`` root: ``GET /v1/models``,
``GET /health`` and ``POST /v1/chat/completions``. Each port has a behaviour (``ok``, ``down``:
connection refused, ``500``, ``400``, ``broken``: a first chunk then a dropped connection,
``slow``: an answer that waits for ``release``) and the test reads which port got each request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from adapters.base import GenerationRequest, ImageInput, Message, SamplingParams
from adapters.upstream import UpstreamAdapter, UpstreamConfig
from tests.support import make_image
from tests.unit.adapters.upstream.upstream_fake import DONE, Body, content, usage

__all__ = ("PORTS", "Replicas", "chat", "image", "pool", "root")

PORTS = (9001, 9002, 9003)


def root(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


def image(seed: int) -> ImageInput:
    return ImageInput(make_image(64, 64, seed=seed), digest=f"digest-{seed}")


def chat(*turns: str, first: ImageInput | None = None, scope: str = "") -> GenerationRequest:
    """A conversation: a system turn, then user turns (with ``first`` leading the first)."""
    messages = [Message("system", ("Be brief.",))]
    for i, text in enumerate(turns):
        parts: tuple[str | ImageInput, ...] = (text,)
        if i == 0 and first is not None:
            parts = (first, text)
        if i:
            messages.append(Message("assistant", ("ok",)))
        messages.append(Message("user", parts))
    return GenerationRequest(tuple(messages), SamplingParams(max_tokens=4), cache_scope=scope)


class Replicas:
    """The handler of every emulated replica; ``behaviour[port]`` says how each one answers."""

    def __init__(self, ports: tuple[int, ...] = PORTS) -> None:
        self.behaviour: dict[int, str] = dict.fromkeys(ports, "ok")
        self.chats: list[int] = []
        """The port of every chat request, in order."""
        self.bodies: list[dict[str, Any]] = []
        self.probes: list[int] = []
        self.release = asyncio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or 80
        state = self.behaviour.get(port, "down")
        if state == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused")
        if request.url.path == "/health":
            self.probes.append(port)
            return httpx.Response(500 if state == "500" else 200)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "big-vlm"}]})
        assert (request.method, request.url.path) == ("POST", "/v1/chat/completions")
        self.chats.append(port)
        self.bodies.append(json.loads(request.content))
        if state in ("500", "400"):
            return httpx.Response(int(state), json={"error": {"message": "no"}})
        parts: list[Any] = [content(f"from {port}"), content("", "stop"), usage(3, 1), DONE]
        if state == "broken":
            parts = [content("partial"), httpx.ReadError("connection reset")]
        stream = _Waiting(parts, self.release) if state == "slow" else Body(parts)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    def count(self, port: int) -> int:
        return self.chats.count(port)


class _Waiting(Body):
    """A body that sends nothing until ``release`` is set."""

    def __init__(self, parts: list[Any], release: asyncio.Event) -> None:
        super().__init__(parts)
        self._release = release

    async def __aiter__(self) -> Any:
        await self._release.wait()
        async for piece in super().__aiter__():
            yield piece


def pool(fake: Replicas, **config: Any) -> UpstreamAdapter:
    """An adapter over the ``fake`` replicas (every port, unless ``replicas_dns`` is set)."""
    observer = config.pop("observer", None)
    resolver = config.pop("resolver", None)
    if not config.get("replicas_dns"):
        config.setdefault("replicas", tuple(root(p) for p in fake.behaviour))
    return UpstreamAdapter(
        UpstreamConfig(model="big-vlm", **config),
        transport=httpx.MockTransport(fake),
        observer=observer,
        resolver=resolver,
    )
