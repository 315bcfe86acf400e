"""Serving ``/metrics``: HTTP-level series, the scrape endpoint, and the optional own port.

- ``metrics_config(config)`` is Litestar's ``PrometheusConfig`` for the HTTP series
  (``vlm_gateway_http_*``). It labels by route template (``group_path=True``: ``/v1/models/{id}``,
  never the raw path). Requests that match no route (404) or no method (405) never reach route
  middleware in Litestar 2.25, so random paths and methods create no series at all.
- ``MetricsController`` answers the scrape in Prometheus text format, or OpenMetrics when the
  ``Accept`` header asks for it, optionally behind bearer keys (``metrics_route_handlers``).
- ``start_metrics_server`` serves the same registry on a separate port instead (a scraper on a
  private network reaches it; the public API port then has no ``/metrics``).

Both Litestar's middleware and our metrics use the default ``prometheus_client`` registry. The
middleware keeps its metrics in a class-level dict keyed by name and creates them on first use,
so several apps in one process share them: that works as long as every app uses the same prefix
and label names, which ``metrics_config`` guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from litestar import Controller, Request, Response, get
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.exposition import choose_encoder

from gateway.http.auth import KeyGuard
from gateway.observability.labels import is_readiness_answer
from gateway.observability.metrics import LATENCY_BUCKETS

__all__ = (
    "EXCLUDE_OPT_KEY",
    "HTTP_METRICS",
    "HTTP_PREFIX",
    "HttpMetricsMiddleware",
    "MetricsConfig",
    "MetricsController",
    "MetricsServer",
    "metrics_config",
    "metrics_route_handlers",
    "start_metrics_server",
)

HTTP_PREFIX = "vlm_gateway_http"
"""Prefix of the series Litestar's Prometheus middleware creates."""
EXCLUDE_OPT_KEY = "exclude_from_http_metrics"
"""A handler or controller with ``opt={EXCLUDE_OPT_KEY: True}`` is not counted in HTTP series."""

_HTTP_LABELS = ("method", "path", "status_code", "app_name")
HTTP_METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (f"{HTTP_PREFIX}_requests_total", "counter", _HTTP_LABELS,
     "HTTP requests answered by a route (path is the route template)."),
    (f"{HTTP_PREFIX}_requests_error_total", "counter", _HTTP_LABELS,
     "HTTP requests answered with a 5xx status (not /ready's 503 while loading or draining)."),
    (f"{HTTP_PREFIX}_request_duration_seconds", "histogram", _HTTP_LABELS,
     "HTTP request latency in seconds, until the last body chunk was sent."),
    (f"{HTTP_PREFIX}_requests_in_progress", "gauge", _HTTP_LABELS,
     "HTTP requests being answered now (status_code is always 200 here)."),
)  # fmt: skip
"""(exported name, type, labels, meaning) of the series Litestar's middleware creates lazily."""


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` settings table."""

    enabled: bool = True
    """Serve ``/metrics`` at all (domain metrics are still recorded when off)."""
    path: str = "/metrics"
    """Path of the scrape endpoint on the API port."""
    api_keys: tuple[str, ...] = ()
    """Bearer keys required on the scrape endpoint; empty leaves it open (it reveals traffic)."""
    port: int = 0
    """Serve metrics on this separate port instead of the API port; 0 keeps them on the API
    port. The separate listener cannot check keys, so ``api_keys`` must then be empty."""
    host: str = "127.0.0.1"
    """Address the separate metrics port binds to (use a private interface, not 0.0.0.0)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("metrics.port must be 0..65535")
        if self.port and self.api_keys:
            raise ValueError(
                "metrics.api_keys needs metrics on the API port (metrics.port = 0); a separate "
                "metrics port cannot check keys, bind it to a private address instead"
            )
        if not self.path.startswith("/"):
            raise ValueError("metrics.path must start with '/'")


class _Uncounted:
    """A counter child that counts nothing (what ``requests_error_count`` gives to skip one)."""

    def labels(self, *values: object) -> _Uncounted:
        return self

    def inc(self, *args: object, **kwargs: object) -> None:
        pass


class HttpMetricsMiddleware(PrometheusMiddleware):
    """Litestar's middleware, except that ``/ready``'s 503 (not ready yet, or draining) is no
    error: it still counts in ``_requests_total`` with its status, not in ``_error_total``."""

    def requests_error_count(self, labels: dict[str, str | int | float]) -> Counter:
        if is_readiness_answer(int(labels.get("status_code", 0)), labels.get("path")):
            return _Uncounted()  # type: ignore[return-value]  # used only as .labels().inc()
        return super().requests_error_count(labels)


def metrics_config(config: MetricsConfig | None = None) -> PrometheusConfig:
    """Litestar's HTTP metrics middleware config; put ``.middleware`` in the app's middleware.

    Same prefix and labels for every app in a process (see the module docstring). The scrape
    endpoint itself is excluded, so scrapes do not show up as traffic.
    """
    del config  # every setting of the HTTP series is fixed, for the reason above
    return PrometheusConfig(
        app_name="vlm-gateway",
        prefix=HTTP_PREFIX,
        group_path=True,
        buckets=list(LATENCY_BUCKETS),
        exclude_opt_key=EXCLUDE_OPT_KEY,
        exclude_unhandled_paths=True,
        middleware_class=HttpMetricsMiddleware,
    )


class MetricsController(Controller):
    """``GET /metrics``: text format 0.0.4, or OpenMetrics 1.0 if ``Accept`` asks for it."""

    path = "/metrics"
    include_in_schema = False
    opt = {EXCLUDE_OPT_KEY: True}  # noqa: RUF012  # Litestar reads it as a plain class attribute

    @get(sync_to_thread=False, summary="Prometheus metrics")
    def scrape(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # A header, not media_type: Litestar would append a second "charset" to a text/ type.
        return Response(encoder(REGISTRY), headers={"Content-Type": content_type})


def metrics_route_handlers(config: MetricsConfig) -> list[type[Controller]]:
    """The scrape controller for ``config`` (path, keys), or none when disabled or on own port."""
    if not config.enabled or config.port:
        return []
    attrs: dict[str, Any] = {"path": config.path}
    if config.api_keys:
        attrs["guards"] = [KeyGuard(config.api_keys)]
    return [type("MetricsController", (MetricsController,), attrs)]


@dataclass(frozen=True)
class MetricsServer:
    """A running separate metrics listener (a daemon thread); ``close()`` stops it."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(config: MetricsConfig) -> MetricsServer | None:
    """Start serving the default registry on ``config.host:config.port``, if so configured.

    Uses ``prometheus_client.start_http_server`` (a daemon thread; it negotiates OpenMetrics
    and gzip by itself). Call once per process at startup, ``close()`` at shutdown. Returns
    ``None`` when metrics are off or stay on the API port.
    """
    if not config.enabled or not config.port:
        return None
    server, thread = start_http_server(config.port, addr=config.host)
    return MetricsServer(server, thread)
