"""Checking replicas: the model check at start, active probes, and DNS membership.

``check_models`` is the start check (``GET /models`` must list the model). ``Monitor`` runs a
pool's background work from the adapter's ``start()`` until its ``aclose()``: a probe of every
replica each ``probe_interval_s`` (``GET`` its ``probe_path``; 200 passes, anything else or no
answer within ``probe_timeout_s`` fails) and, for ``replicas_dns``, a resolution each
``dns_refresh_s``. A failed resolution keeps the replicas already known: a name server's hiccup
must not empty a working pool. The resolver is injectable (tests never resolve a real name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpx

from adapters.base import ModelUnavailable
from adapters.upstream.config import UpstreamConfig
from adapters.upstream.pool import Pool, Replica

__all__ = ("Monitor", "Resolver", "check_models", "resolve")

log = logging.getLogger("adapters.upstream.health")

Resolver = Callable[[str, int], Awaitable[Iterable[tuple[str, int]]]]
"""(host, port) -> the (address, port) pairs of the replicas behind that name."""


async def resolve(host: str, port: int) -> list[tuple[str, int]]:
    """The name's A and AAAA addresses, each with ``port``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({(str(info[4][0]), port) for info in infos})


def _timeout(config: UpstreamConfig) -> httpx.Timeout:
    return httpx.Timeout(
        config.probe_timeout_s, connect=min(config.connect_timeout_s, config.probe_timeout_s)
    )


async def check_models(client: httpx.AsyncClient, replica: Replica, config: UpstreamConfig) -> None:
    """Check that ``replica`` answers ``GET /models`` and lists ``config.model``.

    Raises ``ModelUnavailable`` naming the replica's URL, never the upstream's text.
    """
    where, model = replica.where, config.model
    try:
        response = await client.get(
            replica.models_url, timeout=_timeout(config), headers={"accept": "application/json"}
        )
    except httpx.HTTPError as exc:
        raise ModelUnavailable(
            f"the upstream backend at {where} cannot be reached ({type(exc).__name__})"
        ) from None
    if response.status_code != 200:
        raise ModelUnavailable(
            f"the upstream backend at {where} answered GET /models with HTTP {response.status_code}"
        )
    try:
        listed = json.loads(response.content)["data"]
        ids = {m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)}
    except (ValueError, KeyError, TypeError):
        raise ModelUnavailable(
            f"the upstream backend at {where} sent a malformed GET /models answer"
        ) from None
    if model not in ids:
        raise ModelUnavailable(
            f"the upstream backend at {where} does not serve the model {model!r} "
            f"(it lists {len(ids)} other model(s))"
        )


class Monitor:
    """A pool's probes and DNS refreshes, as background tasks."""

    def __init__(
        self, pool: Pool, client: httpx.AsyncClient, resolver: Resolver | None = None
    ) -> None:
        self.pool = pool
        self.config = pool.config
        self._client = client
        self._resolver = resolver or resolve
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Resolve the pool's name (if any), check every replica's model, start the tasks.

        A replica that fails the check starts ejected (a passing probe admits it later); raises
        ``ModelUnavailable`` when the name cannot be resolved or no replica passes.
        """
        if self.config.replicas_dns:
            try:
                await self.resolve()
            except Exception as exc:  # socket.gaierror, OSError, a resolver's own error
                host = httpx.URL(self.config.replicas_dns).host
                raise ModelUnavailable(
                    f"the upstream replicas' name {host!r} cannot be resolved "
                    f"({type(exc).__name__})"
                ) from None
        replicas = self.pool.replicas
        results = await asyncio.gather(
            *(check_models(self._client, r, self.config) for r in replicas),
            return_exceptions=True,
        )
        failures = [(r, x) for r, x in zip(replicas, results, strict=True) if x is not None]
        for replica, error in failures:
            if not isinstance(error, ModelUnavailable):
                raise error
            self.pool.eject(replica, str(error))
        if len(failures) == len(replicas):
            why = f": {failures[0][1]}" if failures else ""
            raise ModelUnavailable(
                f"none of the {len(replicas)} upstream replica(s) can serve {self.config.model!r}"
                + why
            )
        every = [(self.config.probe_interval_s, self.probe)]
        if self.config.replicas_dns:
            every.append((self.config.dns_refresh_s, self.resolve))
        self._tasks = [asyncio.create_task(self._every(s, work)) for s, work in every]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def resolve(self) -> None:
        """Make the addresses behind ``replicas_dns`` the pool's members."""
        url = httpx.URL(self.config.replicas_dns)
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = sorted(set(await self._resolver(url.host, port)))
        self.pool.set_members(str(url.copy_with(host=h, port=p)) for h, p in addresses)

    async def probe(self) -> None:
        """Probe every replica once, concurrently."""
        await asyncio.gather(*(self._probe(r) for r in self.pool.replicas))

    async def _probe(self, replica: Replica) -> None:
        try:
            # Streamed and not read: only the status matters, whatever the body's size.
            async with self._client.stream(
                "GET", replica.probe_url, timeout=_timeout(self.config)
            ) as response:
                ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        self.pool.probed(replica, ok)

    @staticmethod
    async def _every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception as exc:  # keep probing: one bad round must not end health checks
                log.warning("upstream pool: %s failed (%s)", work.__name__, type(exc).__name__)
