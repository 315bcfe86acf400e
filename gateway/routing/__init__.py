"""The capability router: which task a request is, which backend serves it, and how.

Rules live in ``config/routing.toml`` (``gateway.routing.config``), model limits in capability
profiles (``config/models/*.toml``, ``gateway.routing.profiles``); the keyword classifier is
``gateway.routing.classifier``.
"""

from __future__ import annotations

from gateway.routing.classifier import TASKS, TurnView
from gateway.routing.config import CONFIG_DIR, Backend, RouterConfig
from gateway.routing.profiles import ProfileError
from gateway.routing.router import CapabilityRouter, Decision

__all__ = (
    "CONFIG_DIR",
    "TASKS",
    "Backend",
    "CapabilityRouter",
    "Decision",
    "ProfileError",
    "RouterConfig",
    "TurnView",
)
