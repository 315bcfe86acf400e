"""The image guard: from a client's ``image_url`` to the RGB image the model sees, safely.

``ImageGuard`` is the public surface; its parts are the guard's own: URL sources (data URLs,
SSRF-safe remote fetching, ``file://`` under configured roots), formats sniffed from the header,
pixel and visual-token budgets, decoding with fidelity warnings.
"""

from __future__ import annotations

from gateway.guard.config import GuardConfig
from gateway.guard.guard import ImageGuard
from gateway.guard.refs import (
    WARNINGS,
    DrawnImage,
    FidelityReport,
    HeldBytes,
    ImageRef,
    PreparedImage,
)

__all__ = (
    "WARNINGS",
    "DrawnImage",
    "FidelityReport",
    "GuardConfig",
    "HeldBytes",
    "ImageGuard",
    "ImageRef",
    "PreparedImage",
)
