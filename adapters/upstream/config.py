"""Configuration of one upstream OpenAI-compatible backend (``adapters.upstream.adapter``).

``gateway.cli`` builds it from a ``[backends.<name>.upstream]`` table in
``config/routing.toml``; every field has a default except that ``model`` must be set before an
adapter is built. The limits the gateway checks (context length, images, pixels) are not here:
they come from the backend's capability profile as ``Capabilities``. Construction refuses bad
values with a ``ValueError`` naming the key (never echoing ``api_key_env``'s value, in case a key
was pasted there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

__all__ = ("UpstreamConfig",)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


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
    """Seconds for the ``GET /models`` check at start."""
    max_connections: int = 16
    """Concurrent connections to the upstream (one per streaming generation)."""
    supports_response_format: bool = True
    """Whether the upstream enforces ``response_format`` (json_object / json_schema); used only
    when the adapter is built without ``Capabilities``."""
    supports_tools: bool = True
    """Whether the upstream engine takes ``tools`` and streams calls back (OpenAI does; vLLM
    with ``--enable-auto-tool-choice`` and a ``--tool-call-parser``; SGLang with
    ``--tool-call-parser``). On by default: forwarding is all this adapter does, and the model's
    profile must say ``tools = true`` as well (``gateway.cli``). Turn it off for an upstream
    that would answer tool requests with a 400."""

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.base_url)
        except (httpx.InvalidURL, TypeError):
            raise ValueError("base_url is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an http(s) URL with a host")
        if url.userinfo or url.query or url.fragment:
            raise ValueError("base_url must not carry credentials, a query or a fragment")
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            # Never echo the value: a key pasted here by mistake must not reach a log.
            raise ValueError("api_key_env must be the NAME of an environment variable")
        for name in ("timeout_s", "connect_timeout_s", "probe_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
