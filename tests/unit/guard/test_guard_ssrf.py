"""SSRF rules proven without any connection: injected DNS answers, ``httpx.MockTransport``,
and the structural URL policy (SECURITY.md rule 0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.errors import ImageError, ImageFetchFailed, ImageUrlNotAllowed, InvalidImage
from gateway.guard import ImageGuard
from gateway.guard.network import system_resolver
from tests.unit.guard.conftest import PARAM, StaticResolver, assert_clean, image_bytes, ref

MakeGuard = Callable[..., ImageGuard]
PNG = image_bytes((96, 64))
PUBLIC = "93.184.216.34"


async def fetch_one(guard: ImageGuard, url: str) -> Any:
    (prepared,) = await guard.prepare([ref(url)])
    return prepared


class Recorder:
    """A MockTransport handler that serves PNG bytes and records every request it sees."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)


# -- blocked addresses with injected DNS and MockTransport (no connection at all) -----------------

BLOCKED_ANSWERS = [
    ["127.0.0.1"],
    ["10.0.0.1"],
    ["169.254.169.254"],
    ["100.64.1.1"],
    ["224.0.0.251"],
    ["::1"],
    ["::ffff:127.0.0.1"],
    ["::ffff:a9fe:a9fe"],
    ["64:ff9b::a9fe:a9fe"],  # NAT64 of 169.254.169.254
    ["2002:a00:1::1"],  # 6to4 of 10.0.0.1
    ["fe80::1"],
    ["fd00:ec2::254"],
    [PUBLIC, "10.0.0.1"],  # mixed answers: one bad answer refuses the host
    ["10.0.0.1", PUBLIC],
    ["2606:4700::1111", "::1"],
]


@pytest.mark.parametrize("answers", BLOCKED_ANSWERS)
async def test_non_public_answers_are_refused_without_a_request(
    make_guard: MakeGuard, answers: list[str]
) -> None:
    recorder = Recorder()
    guard = make_guard(
        resolver=StaticResolver({"images.example": answers}),
        transport=httpx.MockTransport(recorder),
    )
    with pytest.raises(ImageUrlNotAllowed) as info:
        await fetch_one(guard, "https://images.example/cat.png")
    assert recorder.requests == []
    assert info.value.param == PARAM
    assert_clean(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:7f00:1]/x.png",
        "http://[64:ff9b::7f00:1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/x.png",
    ],
)
async def test_literal_addresses_are_judged_without_dns(make_guard: MakeGuard, url: str) -> None:
    recorder, resolver = Recorder(), StaticResolver({})
    guard = make_guard(resolver=resolver, transport=httpx.MockTransport(recorder))
    with pytest.raises(ImageUrlNotAllowed):
        await fetch_one(guard, url)
    assert resolver.calls == []
    assert recorder.requests == []


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.1", "0x7f000001", "127.1", "0177.0.0.1", "localhost"]
)
async def test_odd_ipv4_spellings_resolve_to_loopback_and_are_refused(
    make_guard: MakeGuard, host: str
) -> None:
    # The system resolver parses these numerically (or from /etc/hosts): no network involved.
    # httpx refuses some spellings itself (invalid_image); either way nothing is requested.
    recorder = Recorder()
    guard = make_guard(resolver=system_resolver, transport=httpx.MockTransport(recorder))
    with pytest.raises((ImageUrlNotAllowed, InvalidImage)):
        await fetch_one(guard, f"http://{host}/x.png")
    assert recorder.requests == []


async def test_public_answers_are_fetched(make_guard: MakeGuard) -> None:
    recorder = Recorder()
    guard = make_guard(
        resolver=StaticResolver({"images.example": [PUBLIC, "2606:4700::1111"]}),
        transport=httpx.MockTransport(recorder),
    )
    prepared = await fetch_one(guard, "https://images.example/cat.png")
    assert prepared.report.source == "http"
    (request,) = recorder.requests
    assert request.headers["accept-encoding"] == "identity"


async def test_unresolvable_host_is_a_fetch_failure(make_guard: MakeGuard) -> None:
    guard = make_guard(resolver=StaticResolver({}), transport=httpx.MockTransport(Recorder()))
    with pytest.raises(ImageFetchFailed) as info:
        await fetch_one(guard, "https://nowhere.example/cat.png")
    assert_clean(info.value)


# -- URL policy (structural: no DNS, no request) ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "config", "error"),
    [
        ("https://images.example/a.png", {"remote_fetch": False}, ImageUrlNotAllowed),
        ("https://user:pw@images.example/a.png", {}, ImageUrlNotAllowed),
        ("https://images.example\\@evil.example/a.png", {}, ImageUrlNotAllowed),
        ("https://images.example/a b.png", {}, ImageUrlNotAllowed),
        ("ftp://images.example/a.png", {}, ImageUrlNotAllowed),
        ("javascript:alert(1)", {}, ImageUrlNotAllowed),
        ("//images.example/a.png", {}, ImageUrlNotAllowed),
        ("https:///a.png", {}, ImageUrlNotAllowed),
        ("https://images.example/" + "a" * 3000, {}, ImageUrlNotAllowed),
        ("https://images.example/a.png", {"allowed_domains": ["cdn.example"]}, ImageUrlNotAllowed),
        ("https://x.evil.example/a.png", {"denied_domains": ["evil.example"]}, ImageUrlNotAllowed),
        ("https://[::1/a.png", {}, InvalidImage),
    ],
)
async def test_url_policy_refuses_before_any_io(
    make_guard: MakeGuard, url: str, config: dict[str, Any], error: type[ImageError]
) -> None:
    recorder, resolver = Recorder(), StaticResolver({"images.example": [PUBLIC]})
    guard = make_guard(resolver=resolver, transport=httpx.MockTransport(recorder), **config)
    with pytest.raises(error) as info:
        await fetch_one(guard, url)
    assert resolver.calls == []
    assert recorder.requests == []
    assert info.value.param == PARAM
    assert_clean(info.value)


async def test_domain_lists_match_subdomains_and_idna(make_guard: MakeGuard) -> None:
    resolver = StaticResolver({"img.cdn.example": [PUBLIC], "xn--bcher-kva.example": [PUBLIC]})
    guard = make_guard(
        resolver=resolver,
        transport=httpx.MockTransport(Recorder()),
        allowed_domains=["CDN.example.", "*.bücher.example", "bücher.example"],
    )
    await fetch_one(guard, "https://img.cdn.example/a.png")
    await fetch_one(guard, "https://BÜCHER.example/a.png")
    assert resolver.calls == ["img.cdn.example", "xn--bcher-kva.example"]
    for url in ("https://evilcdn.example/a.png", "https://cdn.example.evil/a.png"):
        with pytest.raises(ImageUrlNotAllowed):
            await fetch_one(guard, url)
