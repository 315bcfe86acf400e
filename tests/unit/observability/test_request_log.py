"""The request log: one line per request, request ids, no secrets, library noise kept out."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.response import ServerSentEvent
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from adapters.base import Usage
from gateway.errors import DeadlineExceeded, ImageTooLarge
from gateway.handlers import exception_handlers
from gateway.observability import metrics
from gateway.observability.labels import BACKENDS, configure_labels
from gateway.observability.logs import (
    LIBRARY_LOGGERS,
    LogConfig,
    log_request,
    new_request_id,
    sanitize_request_id,
    setup_logging,
)
from gateway.observability.telemetry import RequestRecord, current_record, install_request_log

MODEL = "fake-vlm"
KEY = "sk-test-SECRET-key-0123456789"
PROMPT = "TOP-SECRET-PROMPT read the invoice number " * 20
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8Dw"


@post("/v1/chat/completions", status_code=200)
async def chat(request: Request[Any, Any, Any]) -> dict[str, Any]:
    # What the service does with the record: model first, then routing, stages, usage.
    body = await request.json()
    record = current_record()
    record.model = body["model"]
    record.prompt = body["messages"][-1]["content"][0]["text"]
    if body.get("reject"):
        raise ImageTooLarge("The image is too large.", param="messages[0].content[1]")
    record.task, record.backend, record.images = "ocr", "local", 1
    record.stage("image_decode", 0.004)
    record.add_warnings(["low_resolution_for_text"])
    record.apply_timings({"queue": 0.01, "vision_encode": 0.25, "prefill": 0.125, "decode": 0.5})
    record.apply_usage(Usage(prompt_tokens=70, completion_tokens=5, image_tokens=64))
    for _ in range(3):
        record.delta()
    return {"ok": True}


@get("/v1/stream", sync_to_thread=False)
def stream(slow: bool = False) -> ServerSentEvent:
    record = current_record()
    record.model, record.stream = MODEL, True

    async def events() -> AsyncIterator[str]:
        yield "first"
        if slow:
            await asyncio.sleep(30)  # the client goes away first
        else:
            current_record().fail(DeadlineExceeded("The request did not complete in time."))
            yield "error frame"

    return ServerSentEvent(events())


@get("/metrics", sync_to_thread=False)
def scrape() -> str:
    return "ok"


def build_app() -> Litestar:
    app = Litestar([chat, stream, scrape], exception_handlers=exception_handlers)
    return install_request_log(app)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Request log into a buffer as JSON; every logger and setting touched is restored after."""
    names = ("vlm_gateway", "gateway", *LIBRARY_LOGGERS)
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    handlers = {n: list(logging.getLogger(n).handlers) for n in names}
    env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ.pop("TRANSFORMERS_VERBOSITY", None)
    configure_labels(models=(MODEL,))
    buffer = io.StringIO()
    setup_logging(LogConfig(format="json"), stream=buffer)
    yield buffer
    setup_logging(LogConfig())
    logging.captureWarnings(False)
    for name, (level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers[name]
    os.environ.pop("TRANSFORMERS_VERBOSITY", None)
    if env is not None:
        os.environ["TRANSFORMERS_VERBOSITY"] = env
    configure_labels(models=(), backends=BACKENDS)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def _chat(client: TestClient[Any], **extra: Any) -> Any:
    content = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )


def test_sanitize_request_id() -> None:
    assert sanitize_request_id("abc-123_X.y:z") == "abc-123_X.y:z"
    assert sanitize_request_id(b"trace-42") == "trace-42"
    assert sanitize_request_id("a" * 128) == "a" * 128
    for bad in ("", "a" * 129, "id with space", "id\nforged=1", "<script>", "ünï", "a/b", "x\x00"):
        assert sanitize_request_id(bad) is None, bad
    assert sanitize_request_id(b"\xff\xfe") is None
    assert sanitize_request_id(None) is None
    fresh = new_request_id()
    assert sanitize_request_id(fresh) == fresh
    assert fresh != new_request_id()


def test_one_json_line_per_request_with_ids_fields_and_timings(log_lines: io.StringIO) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    with TestClient(build_app()) as client:
        given = client.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "client-trace-7"}
        )
        generated = client.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "bad id\r\nX-Injected: 1"}
        )
    assert given.headers["x-request-id"] == "client-trace-7"
    new_id = generated.headers["x-request-id"]
    assert sanitize_request_id(new_id) == new_id
    assert "Injected" not in new_id
    lines = _lines(log_lines)
    assert [line["request_id"] for line in lines] == ["client-trace-7", new_id]
    line = lines[0]
    assert line["logger"] == "vlm_gateway.request"
    assert line["route"] == "/v1/chat/completions"
    assert (line["status"], line["model"], line["task"], line["backend"]) == (
        200,
        MODEL,
        "ocr",
        "local",
    )
    assert (line["prompt_tokens"], line["completion_tokens"], line["image_tokens"]) == (70, 5, 64)
    assert line["timings_ms"] == {
        "image_decode": 4.0, "queue": 10.0, "vision_encode": 250.0, "prefill": 125.0,
        "decode": 500.0,
    }  # fmt: skip
    assert line["images"] == 1
    assert "cache_hits" not in line  # cache figures are metrics, not a per-request guess
    assert line["warnings"] == ["low_resolution_for_text"]
    assert line["error_code"] is None
    assert line["cancelled"] is False
    assert line["duration_ms"] > 0


def test_no_prompt_key_or_image_in_the_line_unless_prompts_are_enabled(
    log_lines: io.StringIO,
) -> None:
    with TestClient(build_app()) as client:
        assert _chat(client).status_code == 200
    text = log_lines.getvalue()
    assert "TOP-SECRET-PROMPT" not in text
    assert KEY not in text
    assert "SECRET-key" not in text
    assert "iVBORw0KGgo" not in text
    assert "base64" not in text
    assert "authorization" not in text.lower()

    setup_logging(LogConfig(format="json", log_prompts=True, prompt_chars=30), stream=log_lines)
    with TestClient(build_app()) as client:
        _chat(client)
    last = _lines(log_lines)[-1]
    assert last["prompt"] == PROMPT[:30]
    assert KEY not in log_lines.getvalue()
    assert "iVBORw0KGgo" not in log_lines.getvalue()


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
        assert _chat(client, reject=True).status_code == 400
        assert client.get("/no/such/route/../x").status_code == 404
    after = (errors("image_too_large", "4xx"), errors("not_found", "4xx"), requests("client_error"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    rejected, unmatched = _lines(log_lines)
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
    (line,) = _lines(log_lines)
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
    (line,) = _lines(log_lines)
    assert line["cancelled"] is True
    assert line["route"] == "/v1/stream"


def test_scrapes_are_not_logged_and_library_warnings_are_silenced(log_lines: io.StringIO) -> None:
    from transformers.utils import logging as hf_logging

    with TestClient(build_app()) as client:
        assert client.get("/metrics").status_code == 200
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    hf_logging.get_logger("transformers.generation.utils").warning("NOISE from transformers")
    hf_logging.get_logger("transformers.generation.utils").info("NOISE info from transformers")
    logging.getLogger("torch").warning("NOISE from torch")
    logging.getLogger("httpx").info("NOISE: HTTP Request: GET http://127.0.0.1/x")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("NOISE via warnings.warn", UserWarning, stacklevel=1)
    hf_logging.get_logger("transformers.modeling_utils").error("weights failed to load")
    log_request(RequestRecord(request_id="direct", method="GET", route="/v1/models", status=200))
    lines = _lines(log_lines)  # every line is JSON, library ones included
    assert "NOISE" not in log_lines.getvalue()
    requests = [line for line in lines if line["logger"] == "vlm_gateway.request"]
    assert [line["request_id"] for line in requests] == ["direct"]  # no line for the scrape
    (library,) = [line for line in lines if line["logger"].startswith("transformers")]
    assert library["msg"] == "weights failed to load"
    assert "request_id" not in library


def test_plain_format_quotes_client_strings(log_lines: io.StringIO) -> None:
    setup_logging(LogConfig(format="plain"), stream=log_lines)
    record = RequestRecord(
        request_id="r1", method="POST", route=None, path="/a b\x1b[31m", status=404
    )
    record.model = 'evil "model"\nforged=1'
    log_request(record)
    (line,) = log_lines.getvalue().splitlines()
    assert "request_id=r1" in line
    assert "status=404" in line
    assert "\x1b" not in line
    assert 'model="evil \\"model\\"\\nforged=1"' in line


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
        assert _chat(client).status_code == 200
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
