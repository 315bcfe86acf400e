"""The local engine: a Qwen3-VL checkpoint run in this process with transformers and torch.

``LocalVLMAdapter`` is the public surface. One worker thread owns the model; requests are
prefilled, then decode together in one continuous batch; vision-encoder outputs and prompt
key/value states are reused through byte-bounded caches.
"""

from __future__ import annotations

from adapters.local.adapter import GenerationFailed, LocalVLMAdapter
from adapters.local.cache import ALL_CACHES, CACHES_OFF, CacheConfig, CachePolicy, CacheStats
from adapters.local.loading import LocalModelConfig, resolve_device, resolve_dtype

__all__ = (
    "ALL_CACHES",
    "CACHES_OFF",
    "CacheConfig",
    "CachePolicy",
    "CacheStats",
    "GenerationFailed",
    "LocalModelConfig",
    "LocalVLMAdapter",
    "resolve_device",
    "resolve_dtype",
)
