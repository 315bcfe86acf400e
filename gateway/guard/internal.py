"""Internal image hosts: the operator's allow-list of private addresses for remote fetching.

The strict policy of ``network.py`` refuses every address that is not public unicast. An operator
whose images live on the private network opens it with two settings of ``[guard]``, both empty by
default; DNS pinning and the per-hop checks of ``fetch.py`` apply unchanged, so every redirect
hop must pass on its own host name and addresses.

* ``internal_hosts``: host names, each matching itself and every name under it (as
  ``allowed_domains`` does). A URL whose host matches may reach a *private* address. IP literals
  never match a name: addresses belong in ``internal_networks``.
* ``internal_networks``: CIDR ranges (a bare address is a /32 or /128). An address inside one may
  be reached, whatever the URL's host.

Policy: non-public addresses fall in three kinds.

* private: RFC 1918, CGNAT ``100.64.0.0/10``, unique-local ``fc00::/7`` and the other reserved
  ranges the strict policy refuses: either setting opens them.
* sensitive: loopback (``127.0.0.0/8``, ``::1``), link-local (``169.254.0.0/16``, ``fe80::/10``)
  and cloud metadata (``169.254.169.254``, ``168.63.129.16``, ``192.0.0.0/24``,
  ``100.100.100.200``, ``fd00:ec2::254``). Only an ``internal_networks`` entry lying inside the
  sensitive block itself opens one (``127.0.0.1/32``, ``127.0.0.0/8``); where blocks nest, inside
  the smallest (``169.254.0.0/16`` opens link-local but not ``169.254.169.254``, which must be
  named alone). A broad range (``10.0.0.0/8``, ``0.0.0.0/0``) or a host name never does: a
  typo'd or generous range must not hand out the credentials a metadata service serves.
* never: unspecified (``0.0.0.0/8``, ``::``), multicast, broadcast, IPv4-compatible IPv6 and
  zone-scoped IPv6: no setting opens them (they are not hosts, or not one host).

IPv4 wrapped in IPv6 (mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is
judged as the embedded IPv4 address, kind and range alike, so no IPv6 range opens IPv4 loopback.

Refusals name the setting that would allow the address (where one would), never the address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from gateway.guard.network import IPAddress

__all__ = ("InternalAccess", "host_matches", "parse_network")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SENSITIVE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "169.254.0.0/16",
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack metadata
        "168.63.129.16/32",  # Azure wire server
        "192.0.0.0/24",  # Oracle Cloud metadata (192.0.0.192)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "::1/128",
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
    )
)
_NEVER = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::/128", "ff00::/8")
)
_V6_COMPATIBLE = ipaddress.IPv6Network("::/96")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_PRIVATE_MESSAGE = (
    "The image URL points to a private or reserved address; an operator can allow it with "
    "guard.internal_hosts (by host name) or guard.internal_networks (by address range)."
)
_SENSITIVE_MESSAGE = (
    "The image URL points to a loopback, link-local or cloud metadata address; an operator can "
    "allow one only by naming its exact network in guard.internal_networks."
)
_NEVER_MESSAGE = (
    "The image URL points to an address that is never fetched (unspecified, multicast or "
    "broadcast)."
)


@functools.lru_cache(maxsize=256)
def _domain(entry: str) -> str:
    """A configured domain as httpx spells hosts: IDNA, lower case, no dots at the ends."""
    entry = entry.strip().removeprefix("*.").strip(".")
    try:
        return httpx.URL(f"http://{entry}/").raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return entry.lower()


def host_matches(host: str, domains: Iterable[str]) -> bool:
    """``host`` equals a domain of the list or lies under one (``cdn.example`` matches
    ``img.cdn.example``, never ``evilcdn.example``)."""
    return any(host == d or host.endswith("." + d) for d in map(_domain, domains))


def parse_network(entry: str) -> Network:
    """One ``internal_networks`` entry; host bits must be zero (``10.0.0.1/8`` is a typo for
    either ``10.0.0.0/8`` or ``10.0.0.1/32``, and guessing which would widen access)."""
    return ipaddress.ip_network(entry.strip(), strict=True)


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _V6_NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def _never(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return True
        if ip in _V6_COMPATIBLE and ip != ipaddress.IPv6Address("::1"):
            return True
    return any(ip in net for net in _NEVER)


def _smallest_sensitive(ip: IPAddress) -> Network | None:
    blocks = [net for net in _SENSITIVE if ip in net]
    return min(blocks, key=lambda net: net.num_addresses) if blocks else None


def _inside(net: Network, block: Network) -> bool:
    if isinstance(net, ipaddress.IPv4Network) and isinstance(block, ipaddress.IPv4Network):
        return net.subnet_of(block)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(block, ipaddress.IPv6Network):
        return net.subnet_of(block)
    return False


@dataclass(frozen=True)
class InternalAccess:
    """The allow-list of ``[guard] internal_hosts`` and ``internal_networks``, applied to an
    address the strict policy refused."""

    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, hosts: Iterable[str], networks: Iterable[str]) -> InternalAccess:
        return cls(tuple(hosts), tuple(parse_network(n) for n in networks))

    def permits(self, host: str | None, ip: IPAddress) -> bool:
        """May a URL whose host is ``host`` (None: an IP literal) connect to ``ip``?"""
        if _never(ip):
            return False
        ip = _unwrap(ip)
        if _never(ip):
            return False
        sensitive = _smallest_sensitive(ip)
        if sensitive is not None:
            return any(ip in net and _inside(net, sensitive) for net in self.networks)
        if host is not None and host_matches(host, self.hosts):
            return True
        return any(ip in net for net in self.networks)

    @staticmethod
    def refusal(ip: IPAddress) -> str:
        """Why ``ip`` was refused, naming the setting that would allow it (never the address)."""
        if _never(ip) or _never(_unwrap(ip)):
            return _NEVER_MESSAGE
        if _smallest_sensitive(_unwrap(ip)) is not None:
            return _SENSITIVE_MESSAGE
        return _PRIVATE_MESSAGE
