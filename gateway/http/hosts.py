"""Which ``Host`` names the server answers for: a defence against DNS rebinding.

A page on any web site can make a browser send requests to ``127.0.0.1:8000`` through a name it
controls (rebinding its DNS answer to 127.0.0.1) and read the answers, because the browser
thinks it is talking to the page's own origin. The browser still sends that name in ``Host``, so:

- when ``server.allowed_hosts`` is set, only those names are answered (``*.example.com`` matches
  any subdomain of example.com; ``*`` allows any host);
- otherwise, when the server listens on a loopback address, only loopback names are answered
  (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``);
- otherwise (listening on a public or wildcard address) every host is answered, as a server
  behind a load balancer must.

Litestar's own ``AllowedHostsConfig`` compares the header with its port and answers in its own
JSON shape, so this small middleware does the check and raises our error instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from litestar.datastructures import Headers
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.errors import InvalidHost

__all__ = ("HostGuard", "HostPolicy", "host_policy")


class HostPolicy:
    """A set of host names and ``*.suffix`` patterns, plus, optionally, every loopback name."""

    def __init__(self, names: Iterable[str] = (), *, loopback: bool = False) -> None:
        names = [n.strip().lower().rstrip(".") for n in names if n.strip()]
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        self.loopback = loopback

    def allows(self, header: str) -> bool:
        """Whether a ``Host`` header value (name or address, with an optional port) is allowed."""
        host = _hostname(header)
        if not host:
            return False
        if host in self.exact or host.endswith(self.suffixes):
            return True
        return self.loopback and _is_loopback(host)


def host_policy(bind: str, allowed: Iterable[str]) -> HostPolicy | None:
    """The policy for a server listening on ``bind`` (None: answer every host)."""
    allowed = tuple(allowed)
    if "*" in (n.strip() for n in allowed):
        return None
    if allowed:
        return HostPolicy(allowed)
    if _is_loopback(bind.lower().strip("[]")):
        return HostPolicy(loopback=True)
    return None


class HostGuard(ASGIMiddleware):
    """Refuses HTTP requests whose ``Host`` the policy does not allow (400 ``invalid_host``)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if not self.policy.allows(Headers.from_scope(scope).get("host", "")):
            raise InvalidHost(
                "The Host header names a host this server does not answer for. An operator "
                "can allow it with server.allowed_hosts."
            )
        await next_app(scope, receive, send)


def _hostname(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        return header[1 : header.find("]")] if "]" in header else ""
    name, _, _port = header.partition(":")
    return name.rstrip(".")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
