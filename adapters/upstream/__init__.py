"""An OpenAI-compatible engine (vLLM, SGLang, another vlm-gateway) behind the adapter contract:
one server, or a pool of replicas routed by cache affinity with health checks and failover."""

from __future__ import annotations

from adapters.upstream.adapter import UpstreamAdapter, UpstreamRejected, UpstreamUnavailable
from adapters.upstream.config import UpstreamConfig
from adapters.upstream.observer import NoPoolObserver, PoolObserver

__all__ = (
    "NoPoolObserver",
    "PoolObserver",
    "UpstreamAdapter",
    "UpstreamConfig",
    "UpstreamRejected",
    "UpstreamUnavailable",
)
