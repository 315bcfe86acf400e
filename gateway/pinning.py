"""An httpx transport that connects only to addresses the fetcher validated.

The URL keeps its host name, so the ``Host`` header, TLS SNI and certificate verification all
use the name; only the TCP connect goes to the pinned address. A host with no pin is never
resolved: the connect fails. This closes the DNS-rebinding gap between "check" and "connect".
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

__all__ = ("PinnedTransport",)

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
