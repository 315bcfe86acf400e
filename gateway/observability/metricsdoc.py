"""The README's metrics table, generated from the metric objects themselves.

``python -m gateway.observability.metricsdoc`` prints it; README.md holds it between the
``<!-- metrics:begin -->`` and ``<!-- metrics:end -->`` markers, and a test keeps the two equal.
Rows come from every ``prometheus_client`` metric defined in ``gateway.observability.metrics``,
``cache_metrics``, ``engine_metrics``, ``tool_metrics`` and ``pool_metrics`` (name, type, labels
and help text as registered) plus the HTTP series Litestar's middleware creates on first use
(``gateway.observability.exposition.HTTP_METRICS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from gateway.observability import (
    cache_metrics,
    engine_metrics,
    labels,
    metrics,
    pool_metrics,
    tool_metrics,
)
from gateway.observability.exposition import HTTP_METRICS
from gateway.routing.classifier import TASKS

__all__ = ("BEGIN", "END", "LABEL_VALUES", "domain_metrics", "render_table")

BEGIN = "<!-- metrics:begin -->"
END = "<!-- metrics:end -->"

_SUFFIX = {"counter": "_total", "histogram": "", "gauge": "", "info": "_info"}


def _values(values: tuple[str, ...]) -> str:
    return ", ".join(f"`{v}`" for v in values)


LABEL_VALUES: dict[str, str] = {
    "model": "served model names and aliases (configured), else `other`",
    "task": _values(TASKS),
    "backend": "configured backend names, else `other`",
    "outcome": _values(labels.OUTCOMES),
    "code": "error codes of `gateway.errors` (the error contract) or, for guard warnings, the "
    "guard's warning codes; else `other`",
    "status_class": _values(labels.STATUS_CLASSES),
    "stage": _values(labels.STAGES),
    "cache": _values(labels.CACHES),
    "kind": _values(engine_metrics.WORK_KINDS),
    "source": _values(labels.SOURCES),
    "action": "router actions: " + _values(labels.ROUTER_ACTIONS),
    "result": _values(tool_metrics.RESULTS) + " (`tool_calls` only)",
    "replica": "a pool replica's `host:port` (configured, or from its DNS name's answers: at "
    f"most {pool_metrics.MAX_REPLICA_LABELS} per backend, then `other`; `pool_*` only)",
    "version, model, dtype, device": "build facts from configuration (`build_info` only)",
    "method, path, status_code, app_name": "HTTP method, route template (never the raw path), "
    "status code, `vlm-gateway` (`vlm_gateway_http_*` only)",
}
"""What each label may hold; every label is bounded, unknown values become ``other``."""


def domain_metrics() -> list[MetricWrapperBase]:
    """Every metric object the observability modules define, in name order."""
    found = {
        id(v): v
        for module in (metrics, cache_metrics, engine_metrics, tool_metrics, pool_metrics)
        for v in vars(module).values()
        if isinstance(v, MetricWrapperBase)
    }
    return sorted(found.values(), key=lambda m: _family(m).name)


def _family(metric: MetricWrapperBase) -> Metric:
    return next(iter(metric.describe()))


def render_table() -> str:
    """The markdown tables (metrics, then label values), ending with a newline."""
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for metric in domain_metrics():
        family = _family(metric)
        name = family.name + _SUFFIX[family.type]
        rows.append(_row(name, family.type, metric._labelnames, family.documentation))
    rows += [_row(*spec) for spec in HTTP_METRICS]
    rows += ["", "| Label | Values |", "|---|---|"]
    rows += [f"| `{label}` | {values} |" for label, values in LABEL_VALUES.items()]
    rows += [
        "",
        "Missing values are `none`, values outside the set `other`: series never grow with "
        "client input. Histograms add `_bucket`, `_sum` and `_count` series.",
    ]
    return "\n".join(rows) + "\n"


def _row(name: str, kind: str, label_names: tuple[str, ...], meaning: str) -> str:
    names = ", ".join(f"`{n}`" for n in label_names) or "-"
    return f"| `{name}` | {kind} | {names} | {meaning} |"


def update_readme(path: Path) -> bool:
    """Replace the table between ``BEGIN`` and ``END`` in ``path``; True if it changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    updated = f"{head}{BEGIN}\n{render_table()}{END}{tail}"
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":
    # ``python -m gateway.observability.metricsdoc`` prints the table; ``--update README.md``
    # rewrites it there.
    if sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        update_readme(Path(sys.argv[2]))
    else:
        print(render_table(), end="")
