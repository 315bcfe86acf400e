"""The operator's internal allow-list (``guard.internal_hosts``, ``guard.internal_networks``):
which private addresses it opens, which it never opens, and that fetching keeps its pinning and
per-hop checks. Refused addresses are proven with injected DNS and ``httpx.MockTransport``; the
only real connections go to a server on 127.0.0.1 (SECURITY.md rule 0)."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from gateway.errors import ImageUrlNotAllowed
from gateway.guard import GuardConfig
from gateway.guard.internal import InternalAccess
from gateway.settings import SettingsError, load_settings
from tests.unit.guard.conftest import PARAM, MakeGuard, StaticResolver, assert_clean, ref, serve
from tests.unit.guard.fetching import PNG, Start, fetch_one

EVERYTHING = ("0.0.0.0/0", "::/0")

# Loopback, link-local, metadata and never-hosts: no broad range and no host name opens them.
SENSITIVE = [
    "127.0.0.1", "127.3.2.1", "::1", "169.254.169.254", "169.254.1.1", "fe80::1",
    "168.63.129.16", "192.0.0.192", "100.100.100.200", "fd00:ec2::254",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1", "2002:a9fe:a9fe::1",
]  # fmt: skip
NEVER = ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1", "::a00:1", "fe80::1%eth0"]
PRIVATE = ["10.1.2.3", "172.16.0.9", "192.168.1.1", "100.64.0.1", "fd12:3456::1", "198.18.0.1"]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def access(hosts: tuple[str, ...] = (), networks: tuple[str, ...] = ()) -> InternalAccess:
    return InternalAccess.from_config(hosts, networks)


# -- the address rules (pure) ---------------------------------------------------------------------


def test_empty_allow_list_opens_nothing() -> None:
    for address in PRIVATE + SENSITIVE + NEVER:
        assert not access().permits("img.corp.example", ip(address)), address


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_open_by_range_or_by_host_name(address: str) -> None:
    assert access(networks=EVERYTHING).permits(None, ip(address))
    assert access(hosts=("corp.example",)).permits("img.corp.example", ip(address))
    assert access(hosts=("corp.example",)).permits("corp.example", ip(address))
    assert not access(hosts=("corp.example",)).permits("evilcorp.example", ip(address))
    assert not access(hosts=("corp.example",)).permits(None, ip(address))  # an IP literal


@pytest.mark.parametrize("address", SENSITIVE + NEVER)
def test_broad_ranges_and_host_names_never_open_sensitive_addresses(address: str) -> None:
    assert not access(networks=EVERYTHING).permits(None, ip(address))
    assert not access(networks=("10.0.0.0/8", "fc00::/7")).permits(None, ip(address))
    assert not access(hosts=("corp.example",)).permits("img.corp.example", ip(address))
    assert not access(("corp.example",), EVERYTHING).permits("img.corp.example", ip(address))


def test_wrapped_ipv4_is_judged_as_the_embedded_address() -> None:
    ten = access(networks=("10.0.0.0/8",))
    for wrapped in ("::ffff:10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::1"):
        assert ten.permits(None, ip(wrapped)), wrapped
    assert not access(networks=("::/0",)).permits(None, ip("::ffff:10.1.2.3"))


@pytest.mark.parametrize(
    ("network", "opened", "closed"),
    [
        ("127.0.0.1/32", ["127.0.0.1", "::ffff:127.0.0.1"], ["127.0.0.2", "::1"]),
        ("127.0.0.1", ["127.0.0.1"], ["127.0.0.2"]),
        ("127.0.0.0/8", ["127.0.0.1", "127.9.9.9"], ["::1", "10.0.0.1"]),
        ("126.0.0.0/7", ["126.0.0.1"], ["127.0.0.1"]),  # wider than loopback itself
        ("::1/128", ["::1"], ["127.0.0.1"]),
        ("169.254.0.0/16", ["169.254.1.1"], ["169.254.169.254"]),  # metadata must be named alone
        ("169.254.169.254/32", ["169.254.169.254"], ["169.254.1.1"]),
        ("168.63.129.16/32", ["168.63.129.16"], []),
        ("192.0.0.192/32", ["192.0.0.192"], ["192.0.0.1"]),
        ("fe80::/10", ["fe80::1"], ["fe80::1%eth0", "::1"]),
        ("0.0.0.0/0", ["10.1.2.3"], ["0.0.0.0", "224.0.0.1"]),
    ],
)
def test_sensitive_blocks_open_only_to_an_exact_network(
    network: str, opened: list[str], closed: list[str]
) -> None:
    rule = access(networks=(network,))
    for address in opened:
        assert rule.permits(None, ip(address)), address
    for address in closed:
        assert not rule.permits(None, ip(address)), address


def test_refusals_name_the_setting_and_never_the_address() -> None:
    private = InternalAccess.refusal(ip("10.1.2.3"))
    assert "guard.internal_hosts" in private
    assert "guard.internal_networks" in private
    for address in ("127.0.0.1", "169.254.169.254", "::ffff:127.0.0.1"):
        message = InternalAccess.refusal(ip(address))
        assert "exact network in guard.internal_networks" in message
        assert address not in message
    assert "guard." not in InternalAccess.refusal(ip("224.0.0.1"))


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"internal_networks": ["10.0.0.1/8"]},  # host bits set: 10.0.0.0/8 or 10.0.0.1/32?
        {"internal_networks": ["corp.example"]},
        {"internal_networks": "10.0.0.0/8"},
        {"internal_hosts": ["10.0.0.7"]},
        {"internal_hosts": ["[::1]"]},
        {"internal_hosts": ["*."]},
    ],
)
def test_malformed_entries_are_refused_at_startup(config: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"guard\.internal_"):
        GuardConfig(**config)  # type: ignore[arg-type]


def test_settings_read_both_lists_from_the_environment() -> None:
    env = {
        "VLM_GATEWAY_GUARD__INTERNAL_HOSTS": "corp.example, images.lan",
        "VLM_GATEWAY_GUARD__INTERNAL_NETWORKS": "10.20.0.0/16,fd12:3456::/48",
    }
    guard = load_settings(environ=env).guard
    assert guard.internal_hosts == ("corp.example", "images.lan")
    assert guard.internal_networks == ("10.20.0.0/16", "fd12:3456::/48")
    with pytest.raises(SettingsError):
        load_settings(environ={"VLM_GATEWAY_GUARD__INTERNAL_NETWORKS": "10.20.0.1/16"})


# -- fetching with the allow-list (injected DNS; MockTransport or a loopback server) ------------


class Recorder:
    """Serves PNG bytes, or a redirect where ``redirects`` names the host; records requests."""

    def __init__(self, redirects: dict[str, str] | None = None) -> None:
        self.redirects = redirects or {}
        self.hosts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.host in self.redirects:
            return httpx.Response(302, headers={"location": self.redirects[request.url.host]})
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)


async def test_private_answers_are_refused_by_default_naming_the_settings(
    make_guard: MakeGuard,
) -> None:
    recorder = Recorder()
    guard = make_guard(
        resolver=StaticResolver({"img.corp.example": ["10.0.0.5"]}),
        transport=httpx.MockTransport(recorder),
    )
    with pytest.raises(ImageUrlNotAllowed) as info:
        await fetch_one(guard, "http://img.corp.example/cat.png")
    assert recorder.hosts == []
    assert info.value.param == PARAM
    assert "guard.internal_networks" in info.value.message
    assert_clean(info.value)


@pytest.mark.parametrize(
    "config",
    [{"internal_hosts": ["corp.example"]}, {"internal_networks": ["10.0.0.0/24", "fd12::/64"]}],
)
async def test_allowed_private_answers_are_fetched(
    make_guard: MakeGuard, config: dict[str, list[str]]
) -> None:
    recorder = Recorder()
    guard = make_guard(
        resolver=StaticResolver({"img.corp.example": ["10.0.0.5", "fd12::5"]}),
        transport=httpx.MockTransport(recorder),
        **config,
    )
    prepared = await fetch_one(guard, "http://img.corp.example/cat.png")
    assert prepared.report.source == "http"
    assert recorder.hosts == ["img.corp.example"]


@pytest.mark.parametrize(
    ("answers", "config"),
    [
        (["10.0.0.5", "127.0.0.1"], {"internal_networks": ["10.0.0.0/8"]}),  # one bad answer
        (["127.0.0.1"], {"internal_networks": list(EVERYTHING)}),
        (["169.254.169.254"], {"internal_networks": ["169.254.0.0/16"]}),
        (["::ffff:169.254.169.254"], {"internal_hosts": ["corp.example"]}),
        (["10.0.0.5"], {"internal_hosts": ["other.example"], "internal_networks": ["10.1.0.0/16"]}),
    ],
)
async def test_answers_outside_the_allow_list_are_refused_without_a_request(
    make_guard: MakeGuard, answers: list[str], config: dict[str, list[str]]
) -> None:
    recorder = Recorder()
    guard = make_guard(
        resolver=StaticResolver({"img.corp.example": answers}),
        transport=httpx.MockTransport(recorder),
        **config,
    )
    with pytest.raises(ImageUrlNotAllowed) as info:
        await fetch_one(guard, "http://img.corp.example/cat.png")
    assert recorder.hosts == []
    assert "guard.internal_networks" in info.value.message
    assert_clean(info.value)


async def test_ip_literals_never_match_a_host_name(make_guard: MakeGuard) -> None:
    # "0.7" is a (strange) name, not an address; a suffix match must not make it one.
    guard = make_guard(
        resolver=StaticResolver({}),
        transport=httpx.MockTransport(Recorder()),
        internal_hosts=["0.7"],
    )
    with pytest.raises(ImageUrlNotAllowed):
        await fetch_one(guard, "http://10.0.0.7/cat.png")


@pytest.mark.parametrize(
    "location", ["http://other.example/x.png", "http://169.254.169.254/latest/meta-data/"]
)
async def test_every_redirect_hop_is_checked_against_the_allow_list(
    make_guard: MakeGuard, location: str
) -> None:
    recorder = Recorder({"img.corp.example": location})
    guard = make_guard(
        resolver=StaticResolver({"img.corp.example": ["10.0.0.5"], "other.example": ["10.0.0.6"]}),
        transport=httpx.MockTransport(recorder),
        internal_hosts=["corp.example"],
        internal_networks=["10.0.0.5/32"],
    )
    with pytest.raises(ImageUrlNotAllowed) as info:
        await fetch_one(guard, "http://img.corp.example/cat.png")
    assert recorder.hosts == ["img.corp.example"]  # the refused hop was never requested
    assert_clean(info.value)


async def test_an_exact_loopback_network_is_fetched_through_the_pinned_address(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()
    server.routes["/cat.png"] = serve(PNG)
    # No loopback port allowance: only the exact network opens 127.0.0.1. "images.test" exists
    # nowhere, so success proves the connection went to the injected answer.
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    guard = make_guard(resolver=resolver, internal_networks=["127.0.0.1/32"])
    prepared = await fetch_one(guard, server.url("/cat.png", host="images.test"))
    assert prepared.report.bytes == len(PNG)
    assert [s.headers["host"] for s in server.seen] == [f"images.test:{server.port}"]


async def test_a_broad_range_does_not_reach_a_loopback_server(
    make_guard: MakeGuard, loopback: Start
) -> None:
    server = await loopback()
    server.routes["/cat.png"] = serve(PNG)
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    guard = make_guard(resolver=resolver, internal_networks=list(EVERYTHING))
    with pytest.raises(ImageUrlNotAllowed):
        await fetch_one(guard, server.url("/cat.png", host="images.test"))
    assert server.connections == 0


async def test_file_url_refusal_names_the_setting(make_guard: MakeGuard) -> None:
    with pytest.raises(ImageUrlNotAllowed) as info:
        await make_guard().prepare([ref("file:///etc/hostname")])
    assert "guard.file_roots" in info.value.message
    assert_clean(info.value)
