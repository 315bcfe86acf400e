"""SSRF-safe download of remote images, and the structural checks of remote URLs.

Policy (SECURITY.md rules 1-4):

* httpx's parser is the only URL parser; backslashes, whitespace, control characters and
  userinfo are refused; only ``http`` and ``https``; allow/deny domain lists by host name;
* the host is resolved once per hop, EVERY answer must pass the :class:`AddressPolicy` or the
  operator's internal allow-list (``gateway.guard.internal``: ``internal_hosts`` by the hop's
  host name, ``internal_networks`` by address), and the connection goes to the first validated
  address (no second lookup);
* redirects are followed by hand (at most ``max_redirects``) and each hop is validated as above;
* ``Accept-Encoding: identity``; a response with any other ``Content-Encoding`` is refused
  (nothing is ever decompressed); bytes are counted raw against the per-image and per-request
  caps while streaming, and a ``Content-Length`` over the cap is refused before the body;
* one deadline covers DNS, connects, redirects and the body, so a drip-feeding server cannot
  stretch a fetch; no proxies from the environment, no retries, HTTP/1.1 only;
* concurrent fetches are bounded process-wide.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpcore
import httpx

from gateway.errors import ImageBytesTooLarge, ImageFetchFailed, ImageUrlNotAllowed, InvalidImage
from gateway.guard.config import GuardConfig
from gateway.guard.internal import InternalAccess, host_matches
from gateway.guard.network import AddressPolicy, PinnedTransport, Resolver, system_resolver

__all__ = ("ByteBudget", "Download", "RemoteFetcher", "parse_remote_url")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSPORT_ERRORS = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
    OSError,  # includes ssl.SSLError
)
"""Everything the transport may raise for a bad server; translated, never shown."""
_OR_DATA = "Use a publicly reachable image URL or send the image as a base64 data URL."


class ByteBudget:
    """Encoded image bytes one request may still bring in (all images together)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int, *, param: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise self.overflow(param)

    def overflow(self, param: str) -> ImageBytesTooLarge:
        return ImageBytesTooLarge(
            f"The images of this request exceed {self.limit} bytes together. "
            "Send fewer, smaller or more compressed images.",
            param=param,
        )


@dataclass(frozen=True)
class Download:
    data: bytes
    content_type: str | None
    """The final response's ``Content-Type`` header, as sent."""


def _check_characters(url: str, param: str) -> None:
    # Parsers disagree on backslashes and whitespace (browsers read http:\\evil as a host).
    if "\\" in url or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ImageUrlNotAllowed(
            "The image URL contains backslashes, spaces or control characters. "
            "Percent-encode them.",
            param=param,
        )


def parse_remote_url(url: str, config: GuardConfig, *, param: str) -> httpx.URL:
    """Parse and check an ``http(s)`` URL without any I/O (scheme, userinfo, domain lists)."""
    if len(url) > config.max_url_length:
        raise ImageUrlNotAllowed(
            f"The image URL is longer than {config.max_url_length} characters. " + _OR_DATA,
            param=param,
        )
    _check_characters(url, param)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidImage("The image URL is not a valid URL. " + _OR_DATA, param=param) from exc
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ImageUrlNotAllowed(
            "Image URLs must be http(s) URLs with a host name, or base64 data URLs.", param=param
        )
    if parsed.userinfo:
        raise ImageUrlNotAllowed(
            "Image URLs must not contain a user name or password. " + _OR_DATA, param=param
        )
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if host_matches(host, config.denied_domains) or (
        config.allowed_domains and not host_matches(host, config.allowed_domains)
    ):
        raise ImageUrlNotAllowed(
            "Images from this host are not allowed on this server. Send the image as a base64 "
            "data URL.",
            param=param,
        )
    return parsed


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent, undecoded. An injected transport may hand back a response it has
    already read (``httpx.MockTransport`` does); the network transport always streams."""
    if response.is_stream_consumed:
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk


class RemoteFetcher:
    """Downloads image bytes under the policy in the module doc. One per :class:`ImageGuard`.

    ``transport`` replaces the pinned network transport (tests pass ``httpx.MockTransport``);
    the resolver and the address policy are applied either way. ``ssl_context`` replaces the
    default verification context (certifi's CAs, hostname checked against the URL's host).
    """

    def __init__(
        self,
        config: GuardConfig,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._config = config
        self._resolve = resolver or system_resolver
        self._policy = policy or AddressPolicy()
        self._internal = InternalAccess.from_config(config.internal_hosts, config.internal_networks)
        self._transport = transport
        self._slots = asyncio.Semaphore(config.max_concurrent_fetches)
        self._ssl = ssl_context
        if self._ssl is None and transport is None and config.remote_fetch:
            # Loading the CA bundle blocks for tens of ms: do it at startup, not on the loop.
            self._ssl = httpx.create_ssl_context(trust_env=False)

    def _request(self, url: httpx.URL) -> httpx.Request:
        t = self._config.fetch_timeout_s
        return httpx.Request(
            "GET",
            url,
            headers={
                "Accept": "image/*",
                "Accept-Encoding": "identity",
                "User-Agent": self._config.user_agent,
            },
            extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
        )

    async def fetch(self, url: httpx.URL, *, param: str, budget: ByteBudget) -> Download:
        """Download one image. Raises only ``ImageError`` subclasses."""
        timeout = self._config.fetch_timeout_s
        async with self._slots:
            try:
                async with asyncio.timeout(timeout):
                    return await self._fetch(url, param, budget)
            except TimeoutError as exc:
                raise ImageFetchFailed(
                    f"Downloading the image took longer than {timeout:g} s. " + _OR_DATA,
                    param=param,
                ) from exc
            except _TRANSPORT_ERRORS as exc:
                raise ImageFetchFailed(
                    "The image could not be downloaded. " + _OR_DATA, param=param
                ) from exc

    async def _fetch(self, url: httpx.URL, param: str, budget: ByteBudget) -> Download:
        # The transport is driven directly, not through httpx.AsyncClient: no cookie jar, no
        # proxy or .netrc lookup, no redirect bookkeeping; every hop is ours to validate.
        pinned: PinnedTransport | None = None
        if self._transport is None:
            assert self._ssl is not None  # made in __init__ whenever remote fetching is on
            pinned = PinnedTransport(self._ssl)
        transport = pinned or self._transport
        assert transport is not None
        try:
            for hop in range(self._config.max_redirects + 1):
                address = await self._admit(url, param)
                if pinned is not None:
                    pinned.pin(url, address)
                response = await transport.handle_async_request(self._request(url))
                try:
                    if response.status_code not in _REDIRECTS:
                        return await self._read(response, param, budget)
                    location = response.headers.get("location")
                    if not location or hop == self._config.max_redirects:
                        raise ImageFetchFailed(
                            "The image URL redirects too often or without a location. " + _OR_DATA,
                            param=param,
                        )
                    _check_characters(location, param)
                    url = parse_remote_url(str(url.join(location)), self._config, param=param)
                finally:
                    await response.aclose()
        finally:
            if pinned is not None:
                await pinned.aclose()
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    async def _admit(self, url: httpx.URL, param: str) -> str:
        """Resolve once and validate every answer; returns the address to connect to."""
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        name: str | None = host.lower().rstrip(".")
        try:
            answers = [ipaddress.ip_address(host)]
            name = None  # an IP literal is no host name: only internal_networks can open it
        except ValueError:
            try:
                answers = [ipaddress.ip_address(a) for a in await self._resolve(host, port)]
            except (OSError, UnicodeError, ValueError) as exc:
                raise ImageFetchFailed(
                    "The image URL's host name could not be resolved. " + _OR_DATA, param=param
                ) from exc
        if not answers:
            raise ImageFetchFailed(
                "The image URL's host name could not be resolved. " + _OR_DATA, param=param
            )
        for answer in answers:
            if not (self._policy.permits(answer, port) or self._internal.permits(name, answer)):
                raise ImageUrlNotAllowed(
                    self._internal.refusal(answer) + " " + _OR_DATA, param=param
                )
        return str(answers[0])

    async def _read(self, response: httpx.Response, param: str, budget: ByteBudget) -> Download:
        if response.status_code != 200:
            raise ImageFetchFailed(
                f"The image server answered HTTP {response.status_code}. " + _OR_DATA, param=param
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageFetchFailed(
                "The image server sent a compressed response (Content-Encoding); image URLs "
                "must serve the image file as it is. " + _OR_DATA,
                param=param,
            )
        cap = self._config.max_image_bytes
        too_large = ImageBytesTooLarge(
            f"The image is larger than {cap} bytes, the limit per image. "
            "Send a smaller or more compressed image.",
            param=param,
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in _raw(response):
            size += len(chunk)
            if size > cap:
                raise too_large
            budget.take(len(chunk), param=param)
            chunks.append(chunk)
        return Download(b"".join(chunks), response.headers.get("content-type"))

    async def aclose(self) -> None:
        """Nothing to release: per-fetch transports are closed after each fetch, and an
        injected transport stays owned by whoever injected it."""
