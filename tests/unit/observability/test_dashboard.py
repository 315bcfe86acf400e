"""The Grafana dashboard and Prometheus config stay in sync with the metrics the server exports."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from litestar import Litestar, get
from litestar.testing import AsyncTestClient, TestClient
from prometheus_client.parser import text_string_to_metric_families

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from gateway.app import create_app
from gateway.observability import MetricsConfig, metrics_config, metrics_route_handlers
from gateway.observability.metricsdoc import domain_metrics
from gateway.routing import CONFIG_DIR, CapabilityRouter
from gateway.settings import ServerSettings, Settings

DASHBOARD = CONFIG_DIR / "grafana" / "vlm-gateway.json"
PROMETHEUS = CONFIG_DIR / "prometheus" / "prometheus.yml"
DS = "${DS_PROMETHEUS}"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}  # fmt: skip
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
             "histogram": ("_bucket", "_sum", "_count", "_created")}  # fmt: skip


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in _panels(dashboard) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects; raises ``ValueError`` if it does not parse."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    stack = []
    for char in bare:
        if char in "([{":
            stack.append(char)
        elif char in ")]}" and (not stack or "([{"[")]}".index(char)] != stack.pop()):
            raise ValueError(f"unbalanced brackets in {expr!r}")
    if stack:
        raise ValueError(f"unbalanced brackets in {expr!r}")
    bare = re.sub(r"\{[^{}]*\}", " ", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range selectors, $__rate_interval
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", bare):
        if bare[match.end() :].lstrip().startswith("(") or match.group().lower() in _KEYWORDS:
            continue  # a function call or an operator keyword
        names.add(match.group())
    if not names:
        raise ValueError(f"no metric selected in {expr!r}")
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name a scrape can contain, from its families' names and types."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _dashboard_names() -> set[str]:
    return {n for t in _targets(json.loads(DASHBOARD.read_text())) for n in metric_names(t["expr"])}


def test_promql_checker_finds_names_and_refuses_broken_expressions() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) (rate("
        'vlm_gateway_stage_duration_seconds_bucket{model=~"$model", stage!="x(y"}'
        "[$__rate_interval]))) / clamp_min(sum(up), 1e-9)"
    )
    assert metric_names(expr) == {"vlm_gateway_stage_duration_seconds_bucket", "up"}
    for broken in ("sum(rate(x[5m])", 'rate(x{a="b"[5m])', "sum()"):
        try:
            metric_names(broken)
        except ValueError:
            continue
        raise AssertionError(f"accepted {broken!r}")


def test_dashboard_imports_without_editing() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["model"]["datasource"]["uid"] == DS
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["gridPos"]["x"] >= 0
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DS}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DS
            grouped = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", target["expr"]))
            labels = {label.strip() for group in grouped for label in group.split(",")}
            for used in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                assert used in labels, f"{panel['title']}: legend uses {used!r}"
    assert "__inputs" not in dashboard or all(
        i["name"] == "DS_PROMETHEUS" for i in dashboard["__inputs"]
    )


def test_dashboard_shows_every_domain_metric() -> None:
    used = _dashboard_names()
    for metric in domain_metrics():
        family = next(iter(metric.describe()))
        series = {family.name + s for s in _SUFFIXES[family.type]}
        assert used & series, f"no panel shows {family.name}"


@get("/probe", sync_to_thread=False)
def probe() -> str:
    return "ok"


def test_every_dashboard_metric_is_exported_by_the_metrics_plumbing() -> None:
    config = MetricsConfig()
    app = Litestar(
        [probe, *metrics_route_handlers(config)], middleware=[metrics_config(config).middleware]
    )
    with TestClient(app) as client:
        assert client.get("/probe").status_code == 200
        exported = exported_names(client.get("/metrics").text)
    missing = _dashboard_names() - exported
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"


async def test_every_dashboard_metric_is_exported_by_the_app() -> None:
    router = CapabilityRouter.from_files(
        CONFIG_DIR / "routing.toml", CONFIG_DIR / "models", served_names=("fake-vlm",)
    )
    app = create_app(Settings(), {"local": FakeAdapter(Capabilities(model_id="fake-vlm"))}, router)
    async with AsyncTestClient(app, base_url="http://localhost") as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 200
        scrape = await client.get(MetricsConfig().path)
    assert scrape.status_code == 200, "create_app does not serve /metrics"
    missing = _dashboard_names() - exported_names(scrape.text)
    assert not missing, f"dashboard queries metrics the app does not export: {sorted(missing)}"


def test_prometheus_scrape_config_points_at_the_default_server() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "vlm-gateway"]
    assert job["metrics_path"] == MetricsConfig().path
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    server = ServerSettings()
    assert targets == [f"{server.host}:{server.port}"]
    assert _seconds(job["scrape_timeout"]) <= _seconds(job["scrape_interval"])


def _seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60}[unit]
