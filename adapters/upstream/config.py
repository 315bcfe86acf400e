"""Configuration of one upstream OpenAI-compatible backend (``adapters.upstream.adapter``).

``gateway.cli`` builds it from a ``[backends.<name>.upstream]`` table in
``config/routing.toml``; every field has a default except that ``model`` must be set before an
adapter is built. The backend is one server (``base_url``) or a pool of replicas of one model
(``replicas`` or ``replicas_dns``; routing, health and failover in ``adapters.upstream.pool``).
The limits the gateway checks (context length, images, pixels) are not here: they come from the
backend's capability profile as ``Capabilities``. Construction refuses bad
values with a ``ValueError`` naming the key (never echoing ``api_key_env``'s value, in case a key
was pasted there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import httpx

__all__ = ("BALANCES", "Balance", "UpstreamConfig")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

Balance = Literal["affinity", "round_robin", "least_in_flight"]
BALANCES: tuple[Balance, ...] = ("affinity", "round_robin", "least_in_flight")


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream backend (a ``[backends.<name>.upstream]`` table)."""

    base_url: str = "http://127.0.0.1:8001/v1"
    """The upstream's OpenAI API root including its version path (``.../v1``): requests go to
    ``{base_url}/chat/completions`` and ``{base_url}/models``. http or https; no credentials,
    query or fragment."""
    model: str = ""
    """The model name the upstream serves (its ``GET /models`` id); required."""
    api_key_env: str = ""
    """Name of the environment variable holding the upstream's bearer key (never the key
    itself); empty: no ``Authorization`` header."""
    timeout_s: float = 300.0
    """Seconds for one whole generation: connect, queue, prefill and every token."""
    connect_timeout_s: float = 5.0
    """Seconds to open a connection to the upstream."""
    probe_timeout_s: float = 10.0
    """Seconds for the ``GET /models`` check at start and for each health probe of a pool."""
    max_connections: int = 16
    """Concurrent connections to the upstream (one per streaming generation); per replica in a
    pool."""
    supports_response_format: bool = True
    """Whether the upstream enforces ``response_format`` (json_object / json_schema); used only
    when the adapter is built without ``Capabilities``."""
    supports_tools: bool = True
    """Whether the upstream engine takes ``tools`` and streams calls back (OpenAI does; vLLM
    with ``--enable-auto-tool-choice`` and a ``--tool-call-parser``; SGLang with
    ``--tool-call-parser``). On by default: forwarding is all this adapter does, and the model's
    profile must say ``tools = true`` as well (``gateway.cli``). Turn it off for an upstream
    that would answer tool requests with a 400."""

    # -- a pool of replicas -------------------------------------------------------------------
    replicas: tuple[str, ...] = ()
    """API roots of replicas of the same model (vLLM, SGLang, vlm-gateway), each like
    ``base_url`` (``http://10.0.0.11:8000/v1``). When set, ``base_url`` is unused and requests
    are spread over the healthy replicas by ``balance``."""
    replicas_dns: str = ""
    """One API root whose host name is resolved every ``dns_refresh_s`` to its A/AAAA
    addresses, each address a replica (the URL's scheme, port and path kept): a Kubernetes
    headless Service. For https the replicas' certificates must name their addresses. Exclusive
    with ``replicas``."""
    dns_refresh_s: float = 10.0
    """Seconds between resolutions of ``replicas_dns`` (a failed one keeps the replicas known)."""
    balance: Balance = "affinity"
    """``affinity``: consistent hashing on the conversation's first image digest (else its
    opening text and cache scope), so every turn and every request about one image reaches the
    replica that has it cached; ``round_robin`` and ``least_in_flight`` for comparison."""
    load_factor: float = 1.25
    """Bounded load (consistent hashing with bounded loads, Mirrokni et al.): a replica takes a
    request only while it holds fewer than ceil(load_factor x (in flight in the pool + 1) /
    healthy replicas); otherwise the request passes to the next replica on the ring (a spill).
    At least 1."""
    probe_interval_s: float = 5.0
    """Seconds between active health probes of every replica."""
    probe_path: str = "/health"
    """The probe's path, relative to the replica's root without its ``/v1`` (vLLM, SGLang and
    vlm-gateway serve ``/health``; ``/ready`` for a vlm-gateway still loading its model)."""
    eject_after: int = 3
    """Consecutive failures (connect errors, broken connections, 5xx answers, failed probes)
    after which a replica is ejected; a passing probe re-admits it."""
    image_uuids: bool = False
    """vLLM (0.11 and later): send each image's digest as its ``uuid``, so a replica that has
    seen the image skips hashing and encoding it again. The digest is the gateway's own (of the
    decoded pixels and their preparation), never a client's, combined with the request's cache
    partition (one API key's image never hits another key's cache entry)."""
    cache_salt: bool = False
    """Send the request's cache partition (a digest of the caller's API key and its own
    ``cache_salt`` / ``prompt_cache_key``) as ``cache_salt``, so an upstream that every key
    shares (vLLM 0.9+, another vlm-gateway) keeps their prefix caches apart as this gateway does.
    Off by default: OpenAI and some engines refuse unknown fields."""

    @property
    def pooled(self) -> bool:
        """True when the backend is a pool of replicas rather than one ``base_url``."""
        return bool(self.replicas or self.replicas_dns)

    def __post_init__(self) -> None:
        _check_url("base_url", self.base_url)
        if isinstance(self.replicas, str) or not isinstance(self.replicas, tuple | list):
            raise ValueError("replicas must be a list of URLs")
        object.__setattr__(self, "replicas", tuple(self.replicas))  # a TOML array is a list
        for url in self.replicas:
            _check_url("replicas", url)
        if len(set(self.replicas)) != len(self.replicas):
            raise ValueError("replicas must not repeat a URL")
        if self.replicas_dns:
            _check_url("replicas_dns", self.replicas_dns)
            if self.replicas:
                raise ValueError("replicas and replicas_dns are exclusive: set one")
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {', '.join(BALANCES)}")
        if not self.load_factor >= 1:
            raise ValueError("load_factor must be at least 1")
        if not isinstance(self.probe_path, str) or not self.probe_path.startswith("/"):
            raise ValueError("probe_path must be a path starting with /")
        if isinstance(self.eject_after, bool) or not self.eject_after >= 1:
            raise ValueError("eject_after must be at least 1")
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            # Never echo the value: a key pasted here by mistake must not reach a log.
            raise ValueError("api_key_env must be the NAME of an environment variable")
        for name in (
            "timeout_s",
            "connect_timeout_s",
            "probe_timeout_s",
            "dns_refresh_s",
            "probe_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def _check_url(key: str, value: object) -> None:
    try:
        url = httpx.URL(value)  # type: ignore[arg-type]
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"{key}: not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{key}: must be an http(s) URL with a host")
    if url.userinfo or url.query or url.fragment:
        raise ValueError(f"{key}: must not carry credentials, a query or a fragment")
