"""Metrics, their bounded labels, the request log and the ``/metrics`` exposition.

Domain metrics are module-level ``prometheus_client`` objects in ``gateway.observability.metrics``
and its siblings ``cache_metrics``, ``engine_metrics`` and ``tool_metrics`` (defined once per
process, so a second app in a test process shares them); every label value passes
``gateway.observability.labels`` so series never grow with client input.
"""

from __future__ import annotations

from gateway.observability.cache_metrics import CacheMetrics
from gateway.observability.engine_metrics import EngineMetrics
from gateway.observability.exposition import (
    MetricsConfig,
    metrics_config,
    metrics_route_handlers,
    start_metrics_server,
)
from gateway.observability.labels import BuildInfo
from gateway.observability.logs import LogConfig, setup_logging
from gateway.observability.telemetry import current_record, install_request_log

__all__ = (
    "BuildInfo",
    "CacheMetrics",
    "EngineMetrics",
    "LogConfig",
    "MetricsConfig",
    "current_record",
    "install_request_log",
    "metrics_config",
    "metrics_route_handlers",
    "setup_logging",
    "start_metrics_server",
)
