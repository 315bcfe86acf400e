"""The request log of failed and cancelled requests, and the metrics each request leaves:
errors counted by code, in-band stream errors, client disconnects, exact metric deltas."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from litestar.testing import TestClient
from prometheus_client import REGISTRY

from gateway.observability import metrics
from tests.unit.observability.request_log_app import MODEL, build_app, json_lines, post_chat


def test_errors_are_logged_and_counted_by_code(log_lines: io.StringIO) -> None:
    def errors(code: str, status_class: str) -> float:
        labels = {"code": code, "status_class": status_class}
        return REGISTRY.get_sample_value("vlm_gateway_errors_total", labels) or 0.0

    def requests(outcome: str) -> float:
        labels = {"model": MODEL, "task": "none", "backend": "none", "outcome": outcome}
        return REGISTRY.get_sample_value("vlm_gateway_requests_total", labels) or 0.0

    before = (
        errors("image_too_large", "4xx"),
        errors("not_found", "4xx"),
        requests("client_error"),
    )
    with TestClient(build_app()) as client:
        assert post_chat(client, reject=True).status_code == 400
        assert client.get("/no/such/route/../x").status_code == 404
    after = (errors("image_too_large", "4xx"), errors("not_found", "4xx"), requests("client_error"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    rejected, unmatched = json_lines(log_lines)
    assert (rejected["status"], rejected["error_code"]) == (400, "image_too_large")
    assert unmatched["route"] is None
    assert unmatched["path"].startswith("/no/such")
    assert unmatched["error_code"] == "not_found"


def test_in_band_stream_error_counts_as_a_server_error(log_lines: io.StringIO) -> None:
    labels = {"model": MODEL, "task": "none", "backend": "none", "outcome": "server_error"}
    before = REGISTRY.get_sample_value("vlm_gateway_requests_total", labels) or 0.0
    with TestClient(build_app()) as client:
        assert client.get("/v1/stream").status_code == 200
    assert REGISTRY.get_sample_value("vlm_gateway_requests_total", labels) == before + 1
    (line,) = json_lines(log_lines)
    assert (line["status"], line["error_code"], line["stream"]) == (200, "timeout", True)


async def test_client_disconnect_mid_stream_is_cancelled(log_lines: io.StringIO) -> None:
    app = build_app()
    cancelled = {"model": MODEL}
    before = REGISTRY.get_sample_value("vlm_gateway_cancelled_requests_total", cancelled) or 0.0
    sent: list[dict[str, Any]] = []
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            disconnect.set()  # the client reads the first event, then hangs up

    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/v1/stream", "raw_path": b"/v1/stream", "query_string": b"slow=true",
        "root_path": "", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5),
        "server": ("127.0.0.1", 80), "asgi": {"version": "3.0"},
    }  # fmt: skip
    async with asyncio.timeout(10):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 200
    assert (b"x-request-id", sent[0]["headers"][-1][1]) == sent[0]["headers"][-1]
    assert (
        REGISTRY.get_sample_value("vlm_gateway_cancelled_requests_total", cancelled) == before + 1
    )
    (line,) = json_lines(log_lines)
    assert line["cancelled"] is True
    assert line["route"] == "/v1/stream"


def test_metrics_from_the_chat_request_have_exact_deltas(log_lines: io.StringIO) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok = {"model": MODEL, "task": "ocr", "backend": "other", "outcome": "success"}
    probes = {
        "ok": ("vlm_gateway_requests_total", ok),
        "prompt": ("vlm_gateway_prompt_tokens_total", {"model": MODEL}),
        "image": ("vlm_gateway_image_tokens_total", {"model": MODEL}),
        "encode": (
            "vlm_gateway_stage_duration_seconds_count", {"model": MODEL, "stage": "vision_encode"}
        ),
        "queue": ("vlm_gateway_queue_wait_seconds_count", {"model": MODEL}),
        "ttft": ("vlm_gateway_time_to_first_token_seconds_count", {"model": MODEL}),
        "itl": ("vlm_gateway_inter_token_latency_seconds_count", {"model": MODEL}),
        "warn": ("vlm_gateway_guard_warnings_total", {"code": "low_resolution_for_text"}),
    }  # fmt: skip
    metrics.configure(models=(MODEL,), backends=("upstream",))  # "local" is unknown here
    before = {k: value(n, **lbl) for k, (n, lbl) in probes.items()}
    with TestClient(build_app()) as client:
        assert post_chat(client).status_code == 200
    delta = {k: value(n, **lbl) - before[k] for k, (n, lbl) in probes.items()}
    assert delta == {
        "ok": 1,
        "prompt": 70,
        "image": 64,
        "encode": 1,
        "queue": 1,
        "ttft": 1,
        "itl": 2,
        "warn": 1,
    }
