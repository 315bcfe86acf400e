"""Remote fetching against loopback servers started by the test: address pinning, proxies,
redirects. Hostile servers: ``test_guard_fetch_hostile.py``. Blocked addresses without any
connection: ``test_guard_ssrf.py``."""

from __future__ import annotations

import pytest

from gateway.errors import ImageError, ImageFetchFailed, ImageUrlNotAllowed
from gateway.guard.network import system_resolver
from tests.unit.guard.conftest import (
    PARAM,
    MakeGuard,
    StaticResolver,
    assert_clean,
    redirect,
    serve,
)
from tests.unit.guard.fetching import PNG, Start, fetch_one

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
