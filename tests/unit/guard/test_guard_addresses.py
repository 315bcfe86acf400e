"""The address policy: only public unicast, with IPv6 spellings unwrapped (pure, no sockets)."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.guard.network import AddressPolicy, is_public_address

BLOCKED = [
    # IPv4 private, loopback, link-local (cloud metadata), CGNAT, reserved, multicast
    "0.0.0.0", "10.0.0.1", "100.64.0.1", "100.100.100.200", "127.0.0.1", "127.255.0.1",
    "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.192", "192.0.2.1",
    "192.88.99.1", "192.168.1.1", "198.18.0.1", "198.51.100.1", "203.0.113.1", "224.0.0.1",
    "239.255.255.250", "233.252.0.1", "240.0.0.1", "255.255.255.255", "168.63.129.16",
    # IPv6 loopback, unspecified, link-local, unique-local (AWS IMDS), site-local, multicast
    "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "fec0::1", "ff02::1", "ff0e::1",
    # IPv4 wrapped in IPv6: mapped, compatible, NAT64 (well-known and local), 6to4, Teredo
    "::ffff:127.0.0.1", "::ffff:8.8.8.8", "::ffff:169.254.169.254", "::127.0.0.1", "::a00:1",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "64:ff9b:1::808:808",
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:c0a8:101::", "2001::1", "2001:0:4136:e378::1",
    # documentation and discard prefixes
    "2001:db8::1", "3fff::1", "100::1",
]  # fmt: skip

ALLOWED = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "151.101.1.69",
    "2606:4700:4700::1111", "2a00:1450:4001:81c::200e",
    "64:ff9b::808:808",  # NAT64 of a public address (DNS64 networks)
    "2002:808:808::1",  # 6to4 of a public address
]  # fmt: skip


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_public_address(ip)
    assert not AddressPolicy().permits(ip, 80)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_scoped_ipv6_is_refused() -> None:
    assert not is_public_address(ipaddress.IPv6Address("fe80::1%eth0"))


def test_loopback_allowance_is_exact_ports_and_loopback_only() -> None:
    policy = AddressPolicy(loopback_ports=frozenset({8123}))
    assert policy.permits(ipaddress.ip_address("127.0.0.1"), 8123)
    assert policy.permits(ipaddress.ip_address("::1"), 8123)
    assert not policy.permits(ipaddress.ip_address("127.0.0.1"), 8124)
    assert not policy.permits(ipaddress.ip_address("::ffff:127.0.0.1"), 8123)
    assert not policy.permits(ipaddress.ip_address("10.0.0.1"), 8123)
    assert not policy.permits(ipaddress.ip_address("169.254.169.254"), 8123)
    assert not AddressPolicy().permits(ipaddress.ip_address("127.0.0.1"), 8123)
