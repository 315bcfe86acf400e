"""The scrape endpoint and Litestar's HTTP series: route templates, keys, OpenMetrics, own port."""

from __future__ import annotations

import random
import socket
import string
from typing import Any

import httpx
import pytest
from litestar import Litestar, get, post
from litestar.params import FromPath, JSONBody
from litestar.testing import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.handlers import exception_handlers
from gateway.observability.exposition import (
    HTTP_METRICS,
    MetricsConfig,
    metrics_config,
    metrics_route_handlers,
    start_metrics_server,
)


@get("/v1/models/{model_id:path}", sync_to_thread=False)
def model_card(model_id: FromPath[str]) -> dict[str, str]:
    return {"id": model_id}


@post("/v1/echo", status_code=200, sync_to_thread=False)
def echo(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    return data


@get("/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("a bug")


def build_app(config: MetricsConfig | None = None) -> Litestar:
    config = config or MetricsConfig()
    return Litestar(
        [model_card, echo, boom, *metrics_route_handlers(config)],
        middleware=[metrics_config(config).middleware],
        exception_handlers=exception_handlers,
    )


def _http_series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in REGISTRY.collect()
        if f.name.startswith("vlm_gateway_http_")
        for s in f.samples
    }


def test_http_series_are_labelled_by_route_template_not_by_raw_path() -> None:
    with TestClient(build_app()) as client:
        assert client.get("/v1/models/some/model-a").status_code == 200
        assert client.get("/v1/models/model-b").status_code == 200
        assert client.get("/metrics").status_code == 200
    paths = {dict(labels)["path"] for _, labels in _http_series()}
    assert "/v1/models/{model_id}" in paths
    assert not any("model-a" in p or "model-b" in p for p in paths)
    assert "/metrics" not in paths  # scrapes are not traffic


def test_random_paths_methods_and_path_params_do_not_grow_the_number_of_series() -> None:
    rng = random.Random(10)
    word = "".join
    with TestClient(build_app()) as client:
        # One request of each status the app can answer on each route, then a second app built
        # in the same process (shared middleware metrics must keep working).
        client.get("/v1/models/x")
        client.post("/v1/echo", json={"a": 1})
        client.post("/v1/echo", content=b"{not json")
        client.get("/metrics")
        client.get("/boom")
    with TestClient(build_app()) as client:
        client.get("/v1/models/y")
        before = _http_series()
        for _ in range(60):
            name = word(rng.choice(string.ascii_letters + "/%._-") for _ in range(12))
            assert client.get(f"/{name}").status_code in (404, 200)
            assert client.get(f"/v1/models/{name}").status_code == 200
            method = word(rng.choice(string.ascii_uppercase) for _ in range(6))
            assert client.request(method, "/v1/echo").status_code == 405
            client.request(rng.choice(["PUT", "DELETE", "PATCH"]), "/v1/models/x")
        assert _http_series() == before


def test_http_metric_names_and_labels_match_the_documented_ones() -> None:
    with TestClient(build_app()) as client:
        client.get("/v1/models/doc")
        assert client.get("/boom").status_code == 500  # the 5xx counter exists from then on
    families = {f.name: f for f in REGISTRY.collect() if f.name.startswith("vlm_gateway_http_")}
    documented = set()
    for name, kind, labels, _meaning in HTTP_METRICS:
        family_name = name.removesuffix("_total") if kind == "counter" else name
        documented.add(family_name)
        assert families[family_name].type == kind
        assert all(set(s.labels) - {"le"} == set(labels) for s in families[family_name].samples)
    assert documented == set(families)


def test_text_format_by_default_and_openmetrics_when_asked() -> None:
    with TestClient(build_app()) as client:
        plain = client.get("/metrics")
        assert plain.status_code == 200
        assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# TYPE vlm_gateway_requests_total counter" in plain.text
        names = {f.name for f in text_string_to_metric_families(plain.text)}
        assert {"vlm_gateway_requests", "vlm_gateway_stage_duration_seconds"} <= names
        om = client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert om.text.endswith("# EOF\n")
        assert "# TYPE vlm_gateway_requests counter" in om.text


def test_keys_protect_the_endpoint_with_the_openai_error_shape() -> None:
    config = MetricsConfig(api_keys=("metrics-key",), path="/internal/metrics")
    with TestClient(build_app(config)) as client:
        missing = client.get("/internal/metrics")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = client.get("/internal/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.get("/internal/metrics", headers={"authorization": "Bearer metrics-key"})
        assert ok.status_code == 200
        assert "vlm_gateway_requests_total" in ok.text
        assert client.get("/metrics").status_code == 404


def test_config_refuses_keys_on_a_separate_port_and_bad_values() -> None:
    with pytest.raises(ValueError, match="api_keys"):
        MetricsConfig(port=9464, api_keys=("k",))
    with pytest.raises(ValueError, match="port"):
        MetricsConfig(port=70000)
    with pytest.raises(ValueError, match="path"):
        MetricsConfig(path="metrics")
    assert metrics_route_handlers(MetricsConfig(enabled=False)) == []
    assert start_metrics_server(MetricsConfig()) is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_own_port_serves_the_registry_and_the_api_port_has_no_metrics() -> None:
    config = MetricsConfig(port=_free_port(), host="127.0.0.1")
    server = start_metrics_server(config)
    assert server is not None
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        assert response.status_code == 200
        assert "vlm_gateway_requests_total" in response.text
        with TestClient(build_app(config)) as client:
            assert client.get("/metrics").status_code == 404
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{config.port}/metrics", timeout=2)
