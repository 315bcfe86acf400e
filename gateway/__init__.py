"""vlm-gateway: an OpenAI-compatible API gateway for vision-language models."""

from __future__ import annotations

__all__ = ("__version__",)

__version__ = "0.1.0"
