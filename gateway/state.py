"""Process-wide state shared by the handlers: components, readiness and the model cards."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from adapters.base import Adapter
from gateway.chat import protocol as wire
from gateway.routing.router import CapabilityRouter
from gateway.settings import Settings

__all__ = ("GatewayState",)


@dataclass
class GatewayState:
    settings: Settings
    router: CapabilityRouter
    backends: Mapping[str, Adapter]
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    """True once every backend loaded and answered its warm-up request."""
    shutting_down: bool = False
    failure: str | None = None
    """Why a backend failed to start, if it did (the process then exits)."""

    def model_card(self, name: str) -> wire.Model:
        return wire.Model(id=name, created=self.created, owned_by="vlm-gateway")
