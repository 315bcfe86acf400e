"""A backend's replicas: membership, health, and which replica serves a request.

One server (``base_url``) is a pool of one that is never ejected or retried. A configured pool
(``replicas`` / ``replicas_dns``) chooses by ``balance``:

- ``affinity``: the replicas in ring order from the request's affinity key
  (``adapters.upstream.ring``), skipping unhealthy ones and those at their bound, the
  ceiling of ``load_factor`` x (requests in flight in the pool + 1) / healthy replicas. Since
  the healthy replicas' bounds add up to more than the pool holds, one of them always has room:
  a hot key spills to its ring neighbours instead of queueing behind itself.
- ``round_robin``: the healthy replicas in turn; ``least_in_flight``: the one holding the fewest
  requests (ties in turn).

``route`` also names the replica to retry on: the next one in the same order (the ring's next,
for affinity). Health: ``eject_after`` consecutive failures (connect errors, broken
connections, 5xx answers, failed probes; any other answer resets the count) eject a replica
and only a passing probe re-admits it. A passing probe does not reset a healthy replica's count,
so one that passes ``/health`` while failing every generation is still ejected.
Everything here runs on the event loop: no locks, and ``route`` + ``begin`` happen without an
``await`` between them, so a burst sees each request's in-flight count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from adapters.base import GenerationRequest
from adapters.upstream.config import UpstreamConfig
from adapters.upstream.observer import NoPoolObserver, PoolObserver
from adapters.upstream.ring import HashRing, affinity_key

__all__ = ("MAX_REPLICAS", "Pool", "Replica")

log = logging.getLogger("adapters.upstream.pool")

MAX_REPLICAS = 64
"""Replicas one pool holds at most (a DNS answer beyond it is cut): bounds connections, probes
and metric series whatever a name server says."""


@dataclass(eq=False)
class Replica:
    """One server of the pool and what the pool knows about it."""

    root: str
    """The API root (``http://10.0.0.11:8000/v1``); the ring hashes it."""
    label: str
    """``host:port``: the replica in metrics and logs."""
    where: str
    """The root without credentials (there are none) for messages: scheme, host, port, path."""
    chat_url: httpx.URL
    models_url: httpx.URL
    probe_url: httpx.URL
    in_flight: int = 0
    failures: int = 0
    """Consecutive failures."""
    healthy: bool = True

    @classmethod
    def at(cls, root: str, probe_path: str = "/health") -> Replica:
        root = root.rstrip("/")
        url = httpx.URL(root)
        # The probe lives beside the API root, not under it: /v1 -> /health.
        prefix = url.path.rstrip("/").removesuffix("/v1")
        port = url.port or (443 if url.scheme == "https" else 80)
        host = f"[{url.host}]" if ":" in url.host else url.host  # an IPv6 address
        return cls(
            root=root,
            label=f"{host}:{port}",
            where=f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}",
            chat_url=httpx.URL(root + "/chat/completions"),
            models_url=httpx.URL(root + "/models"),
            probe_url=url.copy_with(path=prefix + probe_path),
        )


class Pool:
    """The replicas of one backend and the policy that picks among them."""

    def __init__(self, config: UpstreamConfig, observer: PoolObserver | None = None) -> None:
        self.config = config
        self.managed = config.pooled
        """False for a single ``base_url``: no health tracking, no retry."""
        self._observer = observer or NoPoolObserver()
        self._members: dict[str, Replica] = {}
        self._ring = HashRing(())
        self._turn = 0
        self.set_members(config.replicas or (() if config.replicas_dns else (config.base_url,)))

    @property
    def replicas(self) -> list[Replica]:
        return list(self._members.values())

    def set_members(self, roots: Iterable[str]) -> bool:
        """Make ``roots`` the members (at most ``MAX_REPLICAS``); a replica that stays keeps its
        state, a new one starts healthy. True if the membership changed."""
        wanted = list(dict.fromkeys(r.rstrip("/") for r in roots))[:MAX_REPLICAS]
        if wanted == list(self._members):
            return False
        members = {r: self._members.get(r) or Replica.at(r, self.config.probe_path) for r in wanted}
        for root, replica in self._members.items():
            if root not in members:
                self._observer.removed(replica.label)
        for root, replica in members.items():
            if root not in self._members:
                self._observer.health(replica.label, replica.healthy, ejected=False)
        self._members = members
        self._ring = HashRing(members)
        if self.managed:
            log.info("upstream pool: %d replica(s): %s", len(members), ", ".join(members))
        return True

    # -- routing ------------------------------------------------------------------------------

    def route(self, request: GenerationRequest) -> list[Replica]:
        """The replica to send ``request`` to, then the one to retry on (at most two in all);
        empty when no replica is healthy."""
        if not self.managed:
            return list(self._members.values())
        live = [r for r in self._members.values() if r.healthy]
        if not live:
            return []
        if self.config.balance == "affinity":
            return self._affinity(request)
        turn, self._turn = self._turn, self._turn + 1
        order = live[turn % len(live) :] + live[: turn % len(live)]
        if self.config.balance == "least_in_flight":
            order.sort(key=lambda r: r.in_flight)  # stable: ties keep their turn order
        return order[:2]

    def _affinity(self, request: GenerationRequest) -> list[Replica]:
        order = [self._members[root] for root in self._ring.walk(affinity_key(request))]
        live = [r for r in order if r.healthy]
        total = sum(r.in_flight for r in self._members.values())
        # round(): 1.25 * 4 / 5 must be 1, not 1.0000000000000002 -> 2.
        bound = math.ceil(round(self.config.load_factor * (total + 1) / len(live), 9))
        first = next((r for r in live if r.in_flight < bound), live[0])
        self._observer.routed(order[0].label, hit=first is order[0])
        i = live.index(first)
        rest = live[i + 1 :] + live[:i]
        second = next((r for r in rest if r.in_flight < bound), rest[0] if rest else None)
        return [first] if second is None else [first, second]

    # -- accounting ---------------------------------------------------------------------------

    def begin(self, replica: Replica) -> None:
        replica.in_flight += 1
        self._observer.started(replica.label)

    def end(self, replica: Replica, failed: bool) -> None:
        replica.in_flight -= 1
        self._observer.finished(replica.label, failed)

    def answered(self, replica: Replica) -> None:
        """The replica answered (any status below 500): it is up."""
        replica.failures = 0

    def failed(self, replica: Replica) -> None:
        """A connect error, a broken connection, a 5xx or a failed probe."""
        if not self.managed:
            return
        replica.failures += 1
        if replica.healthy and replica.failures >= self.config.eject_after:
            self.eject(replica, f"{replica.failures} consecutive failures")

    def eject(self, replica: Replica, why: str) -> None:
        replica.healthy = False
        replica.failures = max(replica.failures, self.config.eject_after)
        log.warning("upstream replica %s ejected: %s", replica.where, why)
        self._observer.health(replica.label, False, ejected=True)

    def probed(self, replica: Replica, ok: bool) -> None:
        if not ok:
            self.failed(replica)
        elif not replica.healthy:
            replica.healthy, replica.failures = True, 0
            log.info("upstream replica %s re-admitted: its probe passed", replica.where)
            self._observer.health(replica.label, True, ejected=False)
