"""Bounded metric label values (SECURITY.md rule 10).

Every label value passes through ``bounded(label, value)``: a value inside the label's vocabulary
is kept, ``None`` or an empty string becomes ``"none"``, anything else becomes ``"other"``. So
the number of series is fixed by configuration, whatever model names, paths or codes clients
send. Vocabularies: model names configured at startup (``configure_labels(models=...)``), the
classifier's task tuple, backend kinds, the codes of every ``gateway.errors.GatewayError``
subclass, the guard's warning codes, router actions, and fixed tuples for stages, caches,
image sources and outcomes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from gateway import __version__
from gateway.errors import GatewayError
from gateway.routing.classifier import TASKS

__all__ = (
    "BACKENDS",
    "CACHES",
    "CLIENT_CLOSED",
    "EXTRA_ERROR_CODES",
    "NONE",
    "OTHER",
    "OUTCOMES",
    "ROUTER_ACTIONS",
    "SOURCES",
    "STAGES",
    "STATUS_CLASSES",
    "WARNING_CODES",
    "BuildInfo",
    "bounded",
    "configure_labels",
    "error_codes",
    "is_error",
    "is_readiness_answer",
    "outcome",
    "status_class",
    "vocabulary",
)

OTHER = "other"
"""Label value for anything outside a vocabulary."""
NONE = "none"
"""Label value for a missing value (no task decided yet, no error code)."""

STAGES: tuple[str, ...] = ("image_fetch", "image_decode", "vision_encode", "prefill", "decode")
"""Pipeline stages timed by ``vlm_gateway_stage_duration_seconds``."""
CACHES: tuple[str, ...] = ("embedding", "prefix")
"""Caches: vision encoder outputs by image digest, and prompt prefix KV states."""
SOURCES: tuple[str, ...] = ("data", "http", "file", "upload", "pdf")
"""Where an image came from (``gateway.guard.guard.FidelityReport.source``)."""
OUTCOMES: tuple[str, ...] = ("success", "client_error", "server_error", "cancelled")
"""How a request ended: by status class, or ``cancelled`` when the client went away."""
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
"""HTTP status classes (anything else is ``other``)."""
BACKENDS: tuple[str, ...] = ("local", "upstream", "fake")
"""Default backend names (replaced by ``configure_labels(backends=...)``)."""
WARNING_CODES: tuple[str, ...] = (
    # gateway.guard.guard.WARNINGS (image fidelity)
    "declared_type_mismatch", "first_frame_only", "exif_rotated", "cmyk_converted",
    "transparency_flattened", "high_bit_depth_reduced", "downscaled_for_budget", "upscaled",
    "aspect_ratio_changed", "low_resolution_for_text", "lossy_compression",
    "incomplete_image_data",
    # gateway.routing.router.Decision.warnings (capability router)
    "task_beyond_model", "task_redirected", "ocr_language_weak",
)  # fmt: skip
"""Guard and router warning codes. A copy, not an import (the guard and router may record
metrics, so importing them here would be circular); a test keeps it equal to the sources."""
ROUTER_ACTIONS: tuple[str, ...] = ("proceed", "warn", "redirect", "refuse")
"""``gateway.routing.router.Action`` values (a copy for the same reason; a test keeps it equal)."""
EXTRA_ERROR_CODES: tuple[str, ...] = ("server_overloaded", "not_ready", "shutting_down")
"""Codes instances set that are no class's default (``ServiceUnavailable(code=...)``)."""


@dataclass(frozen=True)
class BuildInfo:
    """What ``vlm_gateway_build_info`` says; operator-configured values, never client input."""

    version: str = __version__
    """Gateway version."""
    model: str = ""
    """Served model id (hub id or checkpoint name)."""
    dtype: str = ""
    """Resolved weight dtype (``bfloat16``, ``float32``)."""
    device: str = ""
    """Resolved device (``cpu``, ``cuda``)."""

    def label_values(self) -> tuple[str, str, str, str]:
        # Configured strings, but still cut: a label value is not the place for a long path.
        v, m, t, d = (s[:128] or NONE for s in (self.version, self.model, self.dtype, self.device))
        return v, m, t, d


def error_codes() -> frozenset[str]:
    """Every ``code`` a ``GatewayError`` subclass declares, plus ``EXTRA_ERROR_CODES``."""
    codes = set(EXTRA_ERROR_CODES)
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        if isinstance(cls.code, str):
            codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


_lock = threading.Lock()
_vocab: dict[str, frozenset[str]] = {
    "model": frozenset(),
    "task": frozenset(TASKS),
    "backend": frozenset(BACKENDS),
    "code": error_codes(),
    "warning": frozenset(WARNING_CODES),
    "action": frozenset(ROUTER_ACTIONS),
    "stage": frozenset(STAGES),
    "cache": frozenset(CACHES),
    "source": frozenset(SOURCES),
    "outcome": frozenset(OUTCOMES),
    "status_class": frozenset(STATUS_CLASSES),
}
_extra_codes: frozenset[str] = frozenset()


def configure_labels(
    *,
    models: Iterable[str] = (),
    tasks: Iterable[str] | None = None,
    backends: Iterable[str] | None = None,
    warning_codes: Iterable[str] | None = None,
    router_actions: Iterable[str] | None = None,
    error_codes: Iterable[str] = (),
) -> None:
    """Set the vocabularies at startup; ``None`` keeps the current tuple.

    ``models`` replaces the served model names (aliases included); ``error_codes`` adds codes
    beyond those the ``GatewayError`` subclasses declare. Process-wide: the last app configured
    wins, which is what a process serving one app needs.
    """
    global _extra_codes
    with _lock:
        _vocab["model"] = frozenset(m for m in models if m)
        if tasks is not None:
            _vocab["task"] = frozenset(tasks)
        if backends is not None:
            _vocab["backend"] = frozenset(backends)
        if warning_codes is not None:
            _vocab["warning"] = frozenset(warning_codes)
        if router_actions is not None:
            _vocab["action"] = frozenset(router_actions)
        _extra_codes = frozenset(error_codes)
        _vocab["code"] = _error_vocab()


def _error_vocab() -> frozenset[str]:
    return error_codes() | _extra_codes


def vocabulary(label: str) -> frozenset[str]:
    """The values ``label`` may take besides ``other`` and ``none``."""
    return _vocab[label]


def bounded(label: str, value: object) -> str:
    """``value`` if it is in ``label``'s vocabulary, ``"none"`` if missing, else ``"other"``.

    An error code not yet known re-reads the ``GatewayError`` subclasses once (a module imported
    after startup may define one); the result is still bounded by the classes that exist.
    """
    if value is None or value == "":
        return NONE
    if not isinstance(value, str):
        return OTHER
    allowed = _vocab[label]
    if value in allowed:
        return value
    if label == "code":
        with _lock:
            _vocab["code"] = _error_vocab()
        if value in _vocab["code"]:
            return value
    return OTHER


def status_class(status: int) -> str:
    """``"2xx"`` for 200..299 and so on; ``"other"`` outside 100..599 (0: nothing was sent)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


CLIENT_CLOSED = 499
"""nginx's status for a client that closed the connection first: not an error of ours."""


READY_ROUTE = "/ready"
"""The readiness probe's route (``gateway.http.routes.HealthController.ready``)."""


def is_readiness_answer(status: int, route: object) -> bool:
    """Whether this is ``/ready`` saying 503 (still loading, or draining at shutdown): the answer
    the probe asks for, expected at every start-up, so no error (it would fire error alerts)."""
    return status == 503 and route == READY_ROUTE


def is_error(status: int, route: str | None = None) -> bool:
    """Whether a status counts as an error response: not a 499 (nobody got an answer), nor a 503
    from ``/ready`` (``is_readiness_answer``). ``route`` is the route template, if any."""
    return status >= 400 and status != CLIENT_CLOSED and not is_readiness_answer(status, route)


def outcome(status: int, cancelled: bool) -> str:
    """``cancelled`` if the client went away (499 included), else by status class (1xx-3xx
    count as success)."""
    if cancelled or status == CLIENT_CLOSED:
        return "cancelled"
    if status >= 500 or status < 100:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "success"
