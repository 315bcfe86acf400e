"""An OpenAI-compatible engine (vLLM, SGLang, another vlm-gateway) behind the adapter contract."""

from __future__ import annotations

from adapters.upstream.adapter import UpstreamAdapter, UpstreamRejected, UpstreamUnavailable
from adapters.upstream.config import UpstreamConfig

__all__ = ("UpstreamAdapter", "UpstreamConfig", "UpstreamRejected", "UpstreamUnavailable")
