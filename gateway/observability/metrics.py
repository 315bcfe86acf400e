"""Domain metrics, defined once at import on the default ``prometheus_client`` registry.

Policy: every series is named ``vlm_gateway_*``, every duration is in seconds and every size in
bytes. Metrics live at module level because a registry refuses a second metric of the same name:
defining them inside ``create_app`` breaks the second app built in one test process.

Label values are bounded (SECURITY.md rule 10): every recording function passes its labels
through ``bounded``, which maps anything outside a known vocabulary (configured model names,
the task and backend tuples, ``gateway.errors`` codes, status classes) to ``"other"``, and a
missing value to ``"none"``. No client-chosen string ever becomes a label value.

Code records through the functions below; the metric objects (upper-case module attributes)
are there for tests and for ``gateway.observability.metricsdoc``, which documents each one. The
cache series are in ``gateway.observability.cache_metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway.observability.labels import (
    STAGES,
    BuildInfo,
    bounded,
    configure_labels,
    is_error,
    outcome,
    status_class,
)

__all__ = (
    "LATENCY_BUCKETS",
    "TOKEN_LATENCY_BUCKETS",
    "configure",
    "count_error",
    "count_image",
    "count_rejection",
    "count_router_action",
    "count_warnings",
    "observe_inter_token",
    "observe_queue_wait",
    "observe_request",
    "observe_stage",
    "observe_timings",
    "observe_ttft",
    "set_load",
    "set_ready",
)

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Seconds. From 1 ms (a GPU prefill, a cached image) to 5 min (a CPU vision encode of several
large images is ~10 s each on 2 cores; a long CPU generation runs minutes)."""

TOKEN_LATENCY_BUCKETS: tuple[float, ...] = (
    0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
"""Seconds between tokens: a GPU decodes in ~5-30 ms, the 2-core CPU at ~0.2 s (4.5 tok/s)."""

# -- traffic and latency --------------------------------------------------------------------

REQUESTS = Counter(
    "vlm_gateway_requests",
    "Chat completion requests finished, by outcome (success, client_error, server_error, "
    "cancelled).",
    ("model", "task", "backend", "outcome"),
)
ERRORS = Counter(
    "vlm_gateway_errors",
    "Error responses, by OpenAI error code and HTTP status class (not /ready's 503: expected).",
    ("code", "status_class"),
)
CANCELLED = Counter(
    "vlm_gateway_cancelled_requests",
    "Requests whose client went away before the response ended (generation was stopped).",
    ("model",),
)
REQUEST_DURATION = Histogram(
    "vlm_gateway_request_duration_seconds",
    "End-to-end request latency in seconds, first byte received to last byte sent.",
    ("model", "task"),
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "vlm_gateway_time_to_first_token_seconds",
    "Seconds from request arrival to the first completion text produced.",
    ("model",),
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "vlm_gateway_inter_token_latency_seconds",
    "Seconds between consecutive pieces of completion text in one generation.",
    ("model",),
    buckets=TOKEN_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "vlm_gateway_queue_wait_seconds",
    "Seconds a request waited for a generation slot before work on it began.",
    ("model",),
    buckets=LATENCY_BUCKETS,
)
STAGE_DURATION = Histogram(
    "vlm_gateway_stage_duration_seconds",
    "Seconds spent per pipeline stage: image_fetch and image_decode (per image; decode "
    "includes EXIF rotation and resize), vision_encode, prefill, decode (per request).",
    ("model", "stage"),
    buckets=LATENCY_BUCKETS,
)

# -- tokens and images ----------------------------------------------------------------------

PROMPT_TOKENS = Counter(
    "vlm_gateway_prompt_tokens", "Prompt tokens processed, image tokens included.", ("model",)
)
COMPLETION_TOKENS = Counter(
    "vlm_gateway_completion_tokens", "Completion tokens generated.", ("model",)
)
IMAGE_TOKENS = Counter(
    "vlm_gateway_image_tokens", "Prompt tokens that are image placeholders.", ("model",)
)
CACHED_TOKENS = Counter(
    "vlm_gateway_cached_tokens",
    "Prompt tokens whose work was reused (cached vision features or a reused prefix).",
    ("model",),
)
IMAGES = Counter(
    "vlm_gateway_images",
    "Images accepted into a request, by source (data, http, file).",
    ("source",),
)
IMAGE_BYTES = Counter(
    "vlm_gateway_image_bytes",
    "Encoded image bytes received, by source (data: base64 data URL; http: URL; file: local file).",
    ("source",),
)

# -- guard and router -----------------------------------------------------------------------

GUARD_REJECTIONS = Counter(
    "vlm_gateway_guard_rejections",
    "Images or requests refused by the guard, by error code.",
    ("code",),
)
GUARD_WARNINGS = Counter(
    "vlm_gateway_guard_warnings",
    "Fidelity warnings attached to accepted images, by warning code.",
    ("code",),
)
ROUTER_ACTIONS = Counter(
    "vlm_gateway_router_actions",
    "Capability router decisions, by detected task and action taken.",
    ("task", "action"),
)

# -- state ----------------------------------------------------------------------------------

IN_FLIGHT = Gauge(
    "vlm_gateway_in_flight_requests", "Chat requests generating now (holding a slot)."
)
QUEUE_DEPTH = Gauge("vlm_gateway_queue_depth", "Requests admitted and waiting for a slot now.")
MODEL_LOADED = Gauge("vlm_gateway_model_loaded", "1 when the model weights are loaded, else 0.")
READY = Gauge("vlm_gateway_ready", "1 when the server accepts generation requests, else 0.")
BUILD_INFO = Gauge(
    "vlm_gateway_build_info",
    "Always 1; labels name the gateway version, served model, dtype and device.",
    ("version", "model", "dtype", "device"),
)


def configure(
    *, models: Iterable[str] = (), build_info: BuildInfo | None = None, **vocabularies: Any
) -> None:
    """Set the label vocabularies at startup (keywords of ``labels.configure_labels``); a
    ``build_info`` replaces the single ``vlm_gateway_build_info`` series."""
    configure_labels(models=models, **vocabularies)
    if build_info is not None:
        BUILD_INFO.clear()
        BUILD_INFO.labels(*build_info.label_values()).set(1)


def observe_request(
    *,
    model: str | None,
    task: str | None,
    backend: str | None,
    status: int,
    duration_s: float,
    cancelled: bool = False,
    error_code: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    image_tokens: int = 0,
    cached_tokens: int = 0,
) -> None:
    """Record one finished chat request: count, latency, tokens, error code, cancellation.

    Called once per request (the request log middleware does it for every request that set a
    model). ``status`` is the HTTP status sent (0 if none was); token counts are what the model
    processed, also for cancelled requests.
    """
    m, t = bounded("model", model), bounded("task", task)
    REQUESTS.labels(m, t, bounded("backend", backend), outcome(status, cancelled)).inc()
    REQUEST_DURATION.labels(m, t).observe(max(duration_s, 0.0))
    for counter, n in (
        (PROMPT_TOKENS, prompt_tokens),
        (COMPLETION_TOKENS, completion_tokens),
        (IMAGE_TOKENS, image_tokens),
        (CACHED_TOKENS, cached_tokens),
    ):
        if n > 0:
            counter.labels(m).inc(n)
    if cancelled:
        CANCELLED.labels(m).inc()
    if is_error(status):
        count_error(error_code, status)


def count_error(code: str | None, status: int) -> None:
    """Count one error response (any route) by bounded error code and status class."""
    ERRORS.labels(bounded("code", code), status_class(status)).inc()


def observe_stage(stage: str, seconds: float, *, model: str | None = None) -> None:
    """One observation of a pipeline stage (``gateway.observability.labels.STAGES``), in seconds."""
    STAGE_DURATION.labels(bounded("model", model), bounded("stage", stage)).observe(seconds)


def observe_timings(timings: Mapping[str, float], *, model: str | None = None) -> None:
    """Record an adapter's ``Finish.timings``: ``queue`` as queue wait, known stages as stages.

    Unknown keys are ignored rather than labelled ``other``: a backend's private timing is not a
    stage anyone can read on the dashboard.
    """
    for key, seconds in timings.items():
        if key == "queue":
            observe_queue_wait(seconds, model=model)
        elif key in STAGES:
            observe_stage(key, seconds, model=model)


def observe_ttft(seconds: float, *, model: str | None = None) -> None:
    """Time to first token, in seconds from request arrival."""
    TIME_TO_FIRST_TOKEN.labels(bounded("model", model)).observe(seconds)


def observe_inter_token(seconds: float, *, model: str | None = None) -> None:
    """One gap between consecutive completion deltas, in seconds."""
    INTER_TOKEN_LATENCY.labels(bounded("model", model)).observe(seconds)


def observe_queue_wait(seconds: float, *, model: str | None = None) -> None:
    """Seconds waited for a generation slot."""
    QUEUE_WAIT.labels(bounded("model", model)).observe(seconds)


def count_image(source: str, nbytes: int) -> None:
    """One accepted image of ``source`` (``gateway.guard.refs.SourceKind``) with its encoded
    size (0 for a drawn PDF page)."""
    src = bounded("source", source)
    IMAGES.labels(src).inc()
    if nbytes > 0:
        IMAGE_BYTES.labels(src).inc(nbytes)


def count_rejection(code: str | None) -> None:
    """One guard refusal, by its ``gateway.errors`` code."""
    GUARD_REJECTIONS.labels(bounded("code", code)).inc()


def count_warnings(codes: Iterable[str]) -> None:
    """Guard fidelity warnings, one count per code given (repeats count repeatedly)."""
    for code in codes:
        GUARD_WARNINGS.labels(bounded("warning", code)).inc()


def count_router_action(task: str | None, action: str) -> None:
    """One capability router decision."""
    ROUTER_ACTIONS.labels(bounded("task", task), bounded("action", action)).inc()


def set_load(*, in_flight: int, queued: int) -> None:
    """Requests holding a generation slot and requests waiting for one, now.

    Call it wherever admission changes (admit, slot acquired, release) with the admission's own
    counts, so the gauges cannot drift.
    """
    IN_FLIGHT.set(in_flight)
    QUEUE_DEPTH.set(queued)


def set_ready(*, loaded: bool, ready: bool) -> None:
    """Model loaded and server ready flags (each 0 or 1)."""
    MODEL_LOADED.set(1 if loaded else 0)
    READY.set(1 if ready else 0)
