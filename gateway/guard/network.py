"""The network side of remote fetching: which addresses may be reached, and a transport that
reaches only those.

Addresses. The policy judges resolved addresses, never URL strings. An address is allowed only if it
is public unicast:

* IPv4: ``ipaddress``'s ``is_global`` AND outside an explicit block list (Python calls some
  multicast, ``192.0.0.0/24`` (Oracle's metadata address) and others global), including
  ``100.64.0.0/10`` and Azure's ``168.63.129.16``;
* IPv6: NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``) are unwrapped and the embedded IPv4
  judged as above; otherwise the address must lie in global unicast ``2000::/3``, be
  ``is_global`` and be outside ``2001::/23`` (Teredo and protocol assignments), documentation
  prefixes and ``64:ff9b:1::/48``. IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible,
  site-local, unique-local, link-local and multicast forms fall outside ``2000::/3``: refused.

Tests and local deployments may additionally allow loopback on chosen ports through
:class:`AddressPolicy`; that is a constructor argument, never a config key. Operators open
private addresses with ``[guard] internal_hosts`` and ``internal_networks``
(``gateway.guard.internal``), consulted only for an address this policy refused.

Pinning. ``PinnedTransport``: the URL keeps its host name, so the ``Host`` header, TLS SNI and
certificate verification all use the name; only the TCP connect goes to the pinned address. A host
with no pin is never resolved: the connect fails. This closes the DNS-rebinding gap between "check"
and "connect".
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

__all__ = (
    "AddressPolicy",
    "IPAddress",
    "PinnedTransport",
    "Resolver",
    "is_public_address",
    "system_resolver",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``async (host, port) -> addresses``: every address the name resolves to, as text."""

_V4_BLOCKED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "168.63.129.16/32",  # Azure wire server / metadata, a "global" address
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_6TO4 = ipaddress.IPv6Network("2002::/16")
_V6_BLOCKED = tuple(
    ipaddress.IPv6Network(n) for n in ("2001::/23", "2001:db8::/32", "3fff::/20", "64:ff9b:1::/48")
)


def _public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not any(ip in net for net in _V4_BLOCKED)


def is_public_address(ip: IPAddress) -> bool:
    """True if ``ip`` is public unicast by the strict default policy (see the module doc)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_v4(ip)
    if ip.scope_id is not None:  # a zone index only exists on non-global addresses
        return False
    if ip in _V6_NAT64:
        return _public_v4(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _V6_6TO4:
        embedded = ip.sixtofour
        return embedded is not None and _public_v4(embedded)
    return (
        ip in _V6_GLOBAL_UNICAST
        and ip.is_global
        and not ip.is_multicast
        and not any(ip in net for net in _V6_BLOCKED)
    )


@dataclass(frozen=True)
class AddressPolicy:
    """Decides whether the fetcher may connect to an address. The default is the strict policy.

    ``loopback_ports`` exists for tests and benchmarks, whose image servers listen on loopback:
    it allows ``127.0.0.0/8`` and ``::1`` on exactly those ports and nothing else.
    """

    loopback_ports: frozenset[int] = frozenset()
    """Ports on which loopback addresses are allowed. Empty (the default): loopback refused."""

    def permits(self, ip: IPAddress, port: int) -> bool:
        if ip.is_loopback and port in self.loopback_ports:
            return True
        return is_public_address(ip)


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve ``host`` with the system resolver (in the loop's executor), all families."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, pins: dict[tuple[str, int], str]) -> None:
        self._pins = pins
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = self._pins.get((host.lower(), port))
        if address is None:
            raise httpcore.ConnectError("no validated address for this host")
        return await self._inner.connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for image fetches")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Stream(httpx.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 only, no retries, no proxies, one connection pool per instance.

    Call :meth:`pin` with the validated address before sending a request to a host. httpcore
    exceptions are not translated to httpx ones: the fetcher maps both to its own error.
    """

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._pins: dict[tuple[str, int], str] = {}
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=4,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(self._pins),
        )

    def pin(self, url: httpx.URL, address: str) -> None:
        port = url.port or _DEFAULT_PORTS[url.raw_scheme]
        self._pins[(url.raw_host.decode("ascii").lower(), port)] = address

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        response = await self._pool.handle_async_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Stream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
