"""Shared helpers for the image guard tests: Pillow-made bytes, loopback HTTP servers, DNS.

Network rule: the only sockets opened are to servers these tests start on 127.0.0.1. Blocked
addresses are proven with injected DNS answers and ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import re
import resource
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from adapters.base import Capabilities
from gateway.errors import GatewayError
from gateway.guard import GuardConfig, ImageGuard, ImageRef, PreparedImage
from gateway.guard.network import AddressPolicy

PARAM = "messages[0].content[0].image_url"
CAPS = Capabilities(model_id="test-vlm")

# Text that must never reach a client: library names, reprs, addresses.
LEAKS = ("Traceback", "PIL", "Pillow", "httpx", "httpcore", "Errno", "127.0.0.1", "10.0.0.")


def image_bytes(
    size: tuple[int, int] = (64, 48),
    fmt: str = "PNG",
    mode: str = "RGB",
    color: Any = (200, 30, 60),
    **save: Any,
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def _noise(size: tuple[int, int]) -> Image.Image:
    noise = Image.effect_noise(size, 64).convert("RGB")
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    return Image.blend(noise, gradient, 0.5)


@functools.lru_cache(maxsize=32)
def _noise_bytes(size: tuple[int, int], fmt: str, save: tuple[tuple[str, Any], ...]) -> bytes:
    buf = io.BytesIO()
    _noise(size).save(buf, fmt, **dict(save))
    return buf.getvalue()


def noise_bytes(size: tuple[int, int], fmt: str = "JPEG", **save: Any) -> bytes:
    """A photo-like image (noise + gradient) so encoders cannot cheat on flat colour.
    Deterministic per size within a test run (cached: big ones are slow to make)."""
    return _noise_bytes(size, fmt, tuple(sorted(save.items())))


def data_url(data: bytes, mime: str | None = "image/png") -> str:
    return f"data:{mime or ''};base64,{base64.b64encode(data).decode()}"


def ref(url: str, detail: str = "auto", param: str = PARAM) -> ImageRef:
    return ImageRef(url=url, detail=detail, param=param)  # type: ignore[arg-type]


def assert_clean(exc: GatewayError) -> None:
    """Our message only: no library text, no addresses."""
    assert exc.message
    assert not re.search(r"(?<![0-9A-Za-z])0x[0-9a-fA-F]{6,}", exc.message), exc.message
    for leak in LEAKS:
        assert leak not in exc.message, (leak, exc.message)


class StaticResolver:
    """Injected DNS: fixed answers per host (a list, or a callable for rebinding tests)."""

    def __init__(self, answers: dict[str, Sequence[str] | Callable[[], Sequence[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise OSError("no such host (test resolver)")
        return answer() if callable(answer) else answer


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


Handler = Callable[[asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


@dataclass
class Loopback:
    """An HTTP/1.1 server on 127.0.0.1 whose routes write raw responses (full control over
    framing, timing and headers). Records every request and the peak number of connections."""

    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    max_active: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1") -> Loopback:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
            }
            self.seen.append(Seen(method, target, headers))
            handler = self.routes.get(target.split("?", 1)[0])
            if handler is None:
                await respond(writer, 404, body=b"not found")
            else:
                await handler(writer, headers)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.active -= 1
            self._tasks.discard(task)
            writer.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def respond(
    writer: asyncio.StreamWriter,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    length: bool = True,
) -> None:
    lines = [f"HTTP/1.1 {status} X", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def serve(body: bytes, content_type: str | None = "image/png", **kw: Any) -> Handler:
    async def handler(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        headers = [("Content-Type", content_type)] if content_type else []
        await respond(writer, 200, [*headers, *kw.get("extra", ())], body)

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    async def handler(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        await respond(writer, status, [("Location", location)])

    return handler


@pytest.fixture
async def loopback() -> AsyncIterator[Callable[[], Awaitable[Loopback]]]:
    """Factory of started loopback servers, all closed at the end of the test."""
    servers: list[Loopback] = []

    async def start(host: str = "127.0.0.1") -> Loopback:
        server = await Loopback().start(host)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def make_guard() -> AsyncIterator[Callable[..., ImageGuard]]:
    """``make_guard(config_overrides..., resolver=, transport=, ports=, caps=, ssl_context=)``."""
    guards: list[ImageGuard] = []

    def make(
        *,
        resolver: Any = None,
        transport: Any = None,
        ports: Sequence[int] = (),
        caps: Capabilities = CAPS,
        ssl_context: Any = None,
        **config: Any,
    ) -> ImageGuard:
        guard = ImageGuard(
            GuardConfig(**config),
            caps,
            resolver=resolver,
            transport=transport,
            address_policy=AddressPolicy(loopback_ports=frozenset(ports)),
            ssl_context=ssl_context,
        )
        guards.append(guard)
        return guard

    yield make
    for guard in guards:
        await guard.aclose()


MakeGuard = Callable[..., ImageGuard]


async def one(
    guard: ImageGuard, data: bytes, mime: str | None = "image/png", **kw: Any
) -> PreparedImage:
    (prepared,) = await guard.prepare([ref(data_url(data, mime), kw.pop("detail", "auto"))], **kw)
    return prepared


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, whose IDAT is NOT valid zlib: decoding it
    would fail with invalid_image, so refusing with image_too_large proves nothing was decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"not zlib at all" * 4)
        + png_chunk(b"IEND", b"")
    )


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
