"""Remote fetching from hostile loopback servers started by the test: endless, oversized,
drip-fed and compressed bodies, wrong types and statuses, dropped connections, and the bounds on
concurrent fetches and on a request's bytes."""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import pytest

from gateway.errors import ImageBytesTooLarge, ImageFetchFailed, UnsupportedImageFormat
from tests.unit.guard.conftest import MakeGuard, assert_clean, image_bytes, ref, respond, serve
from tests.unit.guard.fetching import PNG, Start, fetch_one


async def test_endless_body_stops_at_the_byte_cap(make_guard: MakeGuard, loopback: Start) -> None:
    server = await loopback()

    async def endless(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        await respond(writer, 200, [("Content-Type", "image/png")], PNG[:16], length=False)
        while True:
            writer.write(b"\0" * 65536)
            await writer.drain()

    server.routes["/endless"] = endless
    guard = make_guard(ports=[server.port], max_image_bytes=512 * 1024)
    started = time.perf_counter()
    with pytest.raises(ImageBytesTooLarge) as info:
        await fetch_one(guard, server.url("/endless"))
    assert info.value.status == 413
    assert time.perf_counter() - started < 5
    assert_clean(info.value)


async def test_declared_length_over_the_cap_is_refused_before_the_body(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()

    async def huge(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)  # never sends the body

    server.routes["/huge"] = huge
    guard = make_guard(ports=[server.port], fetch_timeout_s=20)
    started = time.perf_counter()
    with pytest.raises(ImageBytesTooLarge):
        await fetch_one(guard, server.url("/huge"))
    assert time.perf_counter() - started < 5


async def test_drip_feed_hits_the_total_deadline(make_guard: MakeGuard, loopback: Start) -> None:
    server = await loopback()

    async def drip(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        for byte in PNG * 10:  # one byte every 50 ms never trips a read timeout
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    server.routes["/drip"] = drip
    guard = make_guard(ports=[server.port], fetch_timeout_s=0.6)
    started = time.perf_counter()
    with pytest.raises(ImageFetchFailed) as info:
        await fetch_one(guard, server.url("/drip"))
    assert time.perf_counter() - started < 3
    assert "0.6 s" in info.value.message
    assert_clean(info.value)


async def test_gzip_bomb_is_never_inflated(make_guard: MakeGuard, loopback: Start) -> None:
    server = await loopback()
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KB on the wire
    server.routes["/bomb.png"] = serve(bomb, extra=[("Content-Encoding", "gzip")])
    guard = make_guard(ports=[server.port])
    with pytest.raises(ImageFetchFailed) as info:
        await fetch_one(guard, server.url("/bomb.png"))
    assert "compressed" in info.value.message
    assert server.seen[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("content_type", "outcome"),
    [
        ("text/html; charset=utf-8", UnsupportedImageFormat),
        ("image/svg+xml", UnsupportedImageFormat),
        ("image/jpeg", "declared_type_mismatch"),
        ("application/octet-stream", None),
        (None, None),
    ],
)
async def test_wrong_content_type(
    make_guard: MakeGuard, loopback: Start, content_type: str | None, outcome: Any
) -> None:
    server = await loopback()
    server.routes["/x"] = serve(PNG, content_type)
    guard = make_guard(ports=[server.port])
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            await fetch_one(guard, server.url("/x"))
        return
    prepared = await fetch_one(guard, server.url("/x"))
    assert prepared.report.format == "png"
    assert ("declared_type_mismatch" in prepared.report.warnings) == (outcome is not None)


@pytest.mark.parametrize("status", [404, 500, 206, 204])
async def test_non_200_is_a_fetch_failure(
    make_guard: MakeGuard, loopback: Start, status: int
) -> None:
    server = await loopback()

    async def answer(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        body = b"" if status == 204 else PNG
        await respond(writer, status, [("Content-Type", "image/png")], body)

    server.routes["/s"] = answer
    guard = make_guard(ports=[server.port])
    with pytest.raises(ImageFetchFailed) as info:
        await fetch_one(guard, server.url("/s"))
    assert str(status) in info.value.message


async def test_a_dropped_connection_is_not_retried(make_guard: MakeGuard, loopback: Start) -> None:
    server = await loopback()

    async def hang_up(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        writer.close()

    server.routes["/drop"] = hang_up
    guard = make_guard(ports=[server.port])
    with pytest.raises(ImageFetchFailed) as info:
        await fetch_one(guard, server.url("/drop"))
    assert server.connections == 1
    assert_clean(info.value)


async def test_concurrent_fetches_are_bounded(make_guard: MakeGuard, loopback: Start) -> None:
    server = await loopback()

    async def slow(writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        await asyncio.sleep(0.15)
        await respond(writer, 200, [("Content-Type", "image/png")], PNG)

    server.routes["/slow.png"] = slow
    guard = make_guard(ports=[server.port], max_concurrent_fetches=2)
    refs = [ref(server.url("/slow.png"), param=f"m[0].content[{i}]") for i in range(5)]
    prepared = await guard.prepare(refs)
    assert len(prepared) == 5
    assert server.max_active == 2


async def test_request_byte_budget_spans_all_downloads(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()
    big = image_bytes((400, 300), "BMP")  # 360 KB
    server.routes["/big.bmp"] = serve(big, "image/bmp")
    guard = make_guard(
        ports=[server.port], max_image_bytes=500_000, max_request_image_bytes=1_000_000
    )
    refs = [ref(server.url("/big.bmp"), param=f"messages[1].content[{i}]") for i in range(3)]
    with pytest.raises(ImageBytesTooLarge) as info:
        await guard.prepare(refs)
    assert info.value.status == 413
    assert (info.value.param or "").startswith("messages[1].content[")
