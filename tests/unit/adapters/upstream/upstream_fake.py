"""An emulated OpenAI-compatible upstream for ``UpstreamAdapter`` unit tests.

``Upstream`` is an ``httpx.MockTransport`` handler (no sockets): it answers ``GET /models`` and
``POST /chat/completions`` with SSE bodies built from ``frame`` / ``content`` / ``usage`` pieces,
pauses and exceptions, and records what it was sent and whether each body was closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from adapters.base import GenerationRequest, Message, SamplingParams, StreamEvent
from adapters.upstream import UpstreamAdapter, UpstreamConfig

__all__ = (
    "BASE",
    "DONE",
    "SECRET",
    "Body",
    "Part",
    "Upstream",
    "ask",
    "content",
    "drain",
    "events",
    "frame",
    "make",
    "usage",
)

BASE = "http://127.0.0.1:8001/v1"  # never connected: every request goes to the MockTransport
SECRET = "upstream trace at /srv/internal 10.9.8.7"
Part = bytes | float | BaseException


def frame(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def content(text: str, finish: str | None = None) -> bytes:
    delta = {"content": text} if text else {}
    return frame({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}
    ]})  # fmt: skip


def usage(prompt: int, completion: int, cached: int = 0) -> bytes:
    details = {"cached_tokens": cached}
    counts = {"prompt_tokens": prompt, "completion_tokens": completion}
    return frame({"choices": [], "usage": {**counts, "prompt_tokens_details": details}})


DONE = frame("[DONE]")


class Body(httpx.AsyncByteStream):
    """A response body sent piece by piece: bytes, a pause (float seconds) or an exception."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.sent = 0
        self.closed = False
        self.flowing = asyncio.Event()
        """Set once two pieces were sent."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
            elif isinstance(part, BaseException):
                raise part
            else:
                self.sent += 1
                if self.sent == 2:
                    self.flowing.set()
                yield part

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """Answers ``GET /models`` and ``POST /chat/completions``; records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.models: list[str] = ["big-vlm"]
        self.chat: Callable[[httpx.Request], httpx.Response] = lambda _: self.sse(
            [content("Hi"), content("", "stop"), usage(3, 1), DONE]
        )
        self.bodies: list[Body] = []
        self.answered = asyncio.Event()
        """Set when a chat response body exists."""

    def sse(self, parts: list[Part], status: int = 200) -> httpx.Response:
        body = Body(parts)
        self.bodies.append(body)
        self.answered.set()
        return httpx.Response(status, headers={"content-type": "text/event-stream"}, stream=body)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET" and request.url.path == "/v1/models":
            data = [{"id": m, "object": "model"} for m in self.models]
            return httpx.Response(200, json={"object": "list", "data": data})
        assert (request.method, str(request.url)) == ("POST", f"{BASE}/chat/completions")
        return self.chat(request)

    def sent(self, i: int = -1) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.requests[i].content)
        return body


def make(upstream: Upstream | Callable[[httpx.Request], Any], **config: Any) -> UpstreamAdapter:
    environ = config.pop("environ", {})
    return UpstreamAdapter(
        UpstreamConfig(base_url=BASE, model="big-vlm", **config),
        transport=httpx.MockTransport(upstream),
        environ=environ,
    )


def ask(text: str = "Hello", max_tokens: int = 16, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        (Message("user", (text,)),), SamplingParams(max_tokens=max_tokens, **sampling)
    )


async def events(adapter: UpstreamAdapter, request: GenerationRequest) -> list[StreamEvent]:
    return [e async for e in adapter.stream(request)]


async def drain(stream: AsyncIterator[StreamEvent], into: list[StreamEvent]) -> None:
    async for event in stream:
        into.append(event)
