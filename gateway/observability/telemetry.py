"""Per-request telemetry: the ``RequestRecord`` and the ASGI wrapper that opens and closes it.

``install_request_log(app)`` wraps the whole Litestar app, so every HTTP request (404 and 405
included, which route middleware never sees) gets a record, an ``x-request-id`` response header,
one request log line and its metrics. Code on the request path reaches the record with
``current_record()`` (a context variable, so it also works inside streaming iterators and
``asyncio.to_thread``) and fills it: model, task, backend, usage, stage timings, warnings.

Metrics at the end of a request: a request that set ``record.model`` counts as a chat request
(``vlm_gateway_requests_total``, latency, tokens); any request answered with an error (status
>= 400, or an in-band stream error noted with ``fail``) counts in ``vlm_gateway_errors_total``,
except a 503 from ``/ready`` (still loading, or draining: expected, see ``labels.is_error``).
A response that started but never sent its last body chunk means the client went away:
``cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from adapters.base import Usage
from gateway.errors import GatewayError
from gateway.observability import metrics
from gateway.observability.labels import is_error
from gateway.observability.logs import (
    REQUEST_ID_HEADER,
    log_request,
    new_request_id,
    sanitize_request_id,
)

__all__ = ("RequestLogMiddleware", "RequestRecord", "current_record", "install_request_log")

log = logging.getLogger("vlm_gateway.telemetry")

_current: ContextVar[RequestRecord | None] = ContextVar("vlm_gateway_record", default=None)
_HEADER = REQUEST_ID_HEADER.encode()


@dataclass(eq=False)
class RequestRecord:
    """What one request did; filled along the request path, logged and measured at its end."""

    request_id: str
    method: str = ""
    path: str = ""
    """Raw path, cut to 200 characters; logged only when no route matched."""
    route: str | None = None
    """Route template (``/v1/models/{model_id:path}``), or ``None`` when no route matched."""
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    """The requested model name; setting it makes this a chat request for the metrics."""
    task: str | None = None
    backend: str | None = None
    stream: bool = False
    status: int = 0
    """HTTP status sent (0: no response started)."""
    error_code: str | None = None
    error_status: int = 0
    """Status of an error sent in-band after a 200 stream started (0: none)."""
    cancelled: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    images: int = 0
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, summed over images."""
    prompt: str | None = None
    """Last user text; logged only with ``log_prompts`` on, cut to ``prompt_chars``."""
    duration_s: float = 0.0
    _last_delta: float | None = None

    def stage(self, name: str, seconds: float) -> None:
        """Record one stage duration in seconds: the histogram now, the log line at the end."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        metrics.observe_stage(name, seconds, model=self.model)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage ``name`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage(name, time.perf_counter() - start)

    def apply_timings(self, timings: Mapping[str, float]) -> None:
        """Take an adapter's ``Finish.timings`` (``queue`` becomes queue wait)."""
        for key, seconds in timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + seconds
        metrics.observe_timings(timings, model=self.model)

    def apply_usage(self, usage: Usage) -> None:
        """Take token counts from an adapter's ``Usage``."""
        self.prompt_tokens = usage.prompt_tokens
        self.completion_tokens = usage.completion_tokens
        self.image_tokens = usage.image_tokens
        self.cached_tokens = usage.cached_tokens

    def delta(self) -> None:
        """Call once per completion text delta: time to first token, then inter-token gaps."""
        now = time.perf_counter()
        if self._last_delta is None:
            metrics.observe_ttft(now - self.started, model=self.model)
        else:
            metrics.observe_inter_token(now - self._last_delta, model=self.model)
        self._last_delta = now

    def add_warnings(self, codes: tuple[str, ...] | list[str]) -> None:
        """Guard or router warning codes: counted now, listed in the log line."""
        self.warnings = (*self.warnings, *codes)
        metrics.count_warnings(codes)

    def fail(self, error: GatewayError) -> None:
        """Note the error this request ends with (also one sent in-band inside a stream)."""
        self.error_code = error.code
        self.error_status = error.status

    @property
    def outcome_status(self) -> int:
        """The status the outcome is judged by: an in-band error's, else the one sent."""
        return self.error_status or self.status

    def as_log(self) -> dict[str, Any]:
        """The log line's fields (no prompt: ``log_request`` adds it only when enabled)."""
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            **({} if self.route is not None else {"path": self.path}),
            "status": self.status,
            "duration_ms": round(self.duration_s * 1000, 1),
            "model": None if self.model is None else self.model[:64],
            "task": self.task,
            "backend": self.backend,
            "stream": self.stream,
            "error_code": self.error_code,
            "cancelled": self.cancelled,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "image_tokens": self.image_tokens,
            "cached_tokens": self.cached_tokens,
            "images": self.images,
            "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }


def current_record() -> RequestRecord:
    """The record of the request being served; outside a request, a detached one (not logged)."""
    record = _current.get()
    return record if record is not None else RequestRecord(request_id=new_request_id())


class RequestLogMiddleware:
    """ASGI wrapper: request id in and out, one ``RequestRecord`` per HTTP request, closed with
    one log line and its metrics. Telemetry failures are logged, never turned into responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == _HEADER), None)
        rid = sanitize_request_id(given) or new_request_id()
        method = str(scope.get("method", ""))[:16]
        record = RequestRecord(rid, method=method, path=scope["path"][:200])
        scope.setdefault("state", {})["request_record"] = record
        ended = False

        async def send_wrapper(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, rid.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        token = _current.set(record)
        failed = False
        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        except Exception:
            failed = True
            raise
        finally:
            _current.reset(token)
            if record.status and not ended and not failed:
                record.cancelled = True  # started, never finished: the client went away
            if failed and record.error_code is None:
                record.error_code, record.error_status = "internal_error", 500
            record.route = scope.get("path_template")
            record.duration_s = time.perf_counter() - record.started
            _close(record, scope)


def _close(record: RequestRecord, scope: Scope) -> None:
    try:
        if record.error_code is None:
            record.error_code = scope.get("state", {}).get("error_code")
        status = record.outcome_status
        if record.model is not None:
            metrics.observe_request(
                model=record.model,
                task=record.task,
                backend=record.backend,
                status=status,
                duration_s=record.duration_s,
                cancelled=record.cancelled,
                error_code=record.error_code,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                image_tokens=record.image_tokens,
                cached_tokens=record.cached_tokens,
            )
        elif is_error(status, record.route):
            metrics.count_error(record.error_code, status)
        log_request(record)
    except Exception:
        log.exception("request telemetry failed")


def install_request_log(app: Litestar) -> Litestar:
    """Wrap ``app``'s whole ASGI handler (after routing errors too) with ``RequestLogMiddleware``.

    Call once, after constructing the app. Litestar calls ``app.asgi_handler`` for every HTTP
    request after setting up the scope; route middleware would miss unmatched paths.
    """
    app.asgi_handler = RequestLogMiddleware(app.asgi_handler)
    return app
