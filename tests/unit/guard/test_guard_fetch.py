"""Remote fetching against loopback servers started by the test (hostile servers, redirects,
pinning). Blocked addresses without any connection: ``test_guard_ssrf.py``."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.errors import (
    ImageBytesTooLarge,
    ImageError,
    ImageFetchFailed,
    ImageUrlNotAllowed,
    UnsupportedImageFormat,
)
from gateway.guard import ImageGuard
from gateway.guard.network import system_resolver
from tests.unit.guard.conftest import (
    PARAM,
    Loopback,
    StaticResolver,
    assert_clean,
    image_bytes,
    redirect,
    ref,
    respond,
    serve,
)

MakeGuard = Callable[..., ImageGuard]
Start = Callable[..., Awaitable[Loopback]]
PNG = image_bytes((96, 64))


async def fetch_one(guard: ImageGuard, url: str) -> Any:
    (prepared,) = await guard.prepare([ref(url)])
    return prepared


# -- the happy path and what the server sees ------------------------------------------------------


async def test_fetch_connects_to_the_pinned_address_with_the_host_name(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()
    server.routes["/cat.png"] = serve(PNG)
    # "images.test" exists nowhere: success proves the connection went to the address the
    # injected resolver returned, without a second lookup.
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    guard = make_guard(resolver=resolver, ports=[server.port])
    prepared = await fetch_one(guard, server.url("/cat.png", host="images.test"))
    assert prepared.report.source == "http"
    assert prepared.report.bytes == len(PNG)
    assert prepared.report.original_size == (96, 64)
    assert resolver.calls == ["images.test"]
    (seen,) = server.seen
    assert seen.headers["host"] == f"images.test:{server.port}"
    assert seen.headers["accept-encoding"] == "identity"


async def test_ipv6_answers_are_pinned_too(make_guard: MakeGuard, loopback: Start) -> None:
    try:
        server = await loopback("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server.routes["/v6.png"] = serve(PNG)
    resolver = StaticResolver({"v6.test": ["::1"]})
    guard = make_guard(resolver=resolver, ports=[server.port])
    await fetch_one(guard, f"http://v6.test:{server.port}/v6.png")
    await fetch_one(guard, f"http://[::1]:{server.port}/v6.png")  # a literal: no DNS at all
    assert resolver.calls == ["v6.test"]
    assert [s.headers["host"] for s in server.seen] == [
        f"v6.test:{server.port}",
        f"[::1]:{server.port}",
    ]


async def test_dns_rebinding_after_validation_has_no_effect(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()
    server.routes["/a.png"] = serve(PNG)
    answers = iter([["127.0.0.1"]])
    # A second lookup would get a private address (StopIteration -> error if it happened).
    resolver = StaticResolver({"rebind.test": lambda: next(answers, ["10.0.0.1"])})
    guard = make_guard(resolver=resolver, ports=[server.port])
    await fetch_one(guard, server.url("/a.png", host="rebind.test"))
    assert resolver.calls == ["rebind.test"]


async def test_each_redirect_hop_is_resolved_and_validated_again(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()
    server.routes["/first"] = redirect("/second.png")
    server.routes["/second.png"] = serve(PNG)
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    resolver = StaticResolver({"rebind.test": lambda: next(answers)})
    guard = make_guard(resolver=resolver, ports=[server.port])
    with pytest.raises(ImageUrlNotAllowed) as info:
        await fetch_one(guard, server.url("/first", host="rebind.test"))
    assert resolver.calls == ["rebind.test", "rebind.test"]
    assert [s.target for s in server.seen] == ["/first"]
    assert_clean(info.value)


async def test_environment_proxies_are_ignored(
    make_guard: MakeGuard, loopback: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, proxy = await loopback(), await loopback()
    target.routes["/p.png"] = serve(PNG)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url(""))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    guard = make_guard(resolver=system_resolver, ports=[target.port, proxy.port])
    await fetch_one(guard, target.url("/p.png"))
    assert proxy.connections == 0
    assert len(target.seen) == 1


# -- redirects --------------------------------------------------------------------------------


async def test_redirect_to_loopback_elsewhere_is_refused(
    make_guard: MakeGuard, loopback: Start
) -> None:
    public, internal = await loopback(), await loopback()
    internal.routes["/admin"] = serve(PNG)
    public.routes["/img"] = redirect(internal.url("/admin"))
    guard = make_guard(ports=[public.port])  # only the "public" server's port is allowed
    with pytest.raises(ImageUrlNotAllowed) as info:
        await fetch_one(guard, public.url("/img"))
    assert internal.connections == 0
    assert info.value.param == PARAM
    assert_clean(info.value)


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://metadata.test/computeMetadata/v1/",  # resolves to link-local below
        "http://user:pw@images.test/a.png",
        "file:///etc/passwd",
        "ftp://images.test/a.png",
        "gopher://images.test:70/",
        "http:\\\\images.test\\a.png",
    ],
)
async def test_redirects_to_forbidden_targets_are_refused_before_connecting(
    make_guard: MakeGuard, loopback: Start, location: str
) -> None:
    server = await loopback()
    server.routes["/img"] = redirect(location, 301)
    resolver = StaticResolver({"metadata.test": ["169.254.169.254"], "images.test": ["1.1.1.1"]})
    guard = make_guard(resolver=resolver, ports=[server.port])
    with pytest.raises(ImageError) as info:
        await fetch_one(guard, server.url("/img"))
    assert info.value.code in ("image_url_not_allowed", "invalid_image")
    assert_clean(info.value)


@pytest.mark.parametrize(("hops", "ok"), [(3, True), (4, False)])
async def test_at_most_three_redirects(
    make_guard: MakeGuard, loopback: Start, hops: int, ok: bool
) -> None:
    server = await loopback()
    for i in range(hops):
        server.routes[f"/r{i}"] = redirect(f"/r{i + 1}" if i + 1 < hops else "/final.png", 307)
    server.routes["/final.png"] = serve(PNG)
    guard = make_guard(ports=[server.port])
    if ok:
        await fetch_one(guard, server.url("/r0"))
    else:
        with pytest.raises(ImageFetchFailed):
            await fetch_one(guard, server.url("/r0"))
        assert "/final.png" not in [s.target for s in server.seen]


# -- hostile servers ------------------------------------------------------------------------------


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
