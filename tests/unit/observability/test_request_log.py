"""The request log: one line per request, request ids, no secrets, library noise kept out.
Errors, cancellations and the metrics a request leaves: ``test_request_log_outcomes.py``."""

from __future__ import annotations

import io
import logging
import os
import warnings

from litestar.testing import TestClient

from gateway.observability.logs import (
    LogConfig,
    log_request,
    new_request_id,
    sanitize_request_id,
    setup_logging,
)
from gateway.observability.telemetry import RequestRecord
from tests.unit.observability.request_log_app import (
    KEY,
    MODEL,
    PROMPT,
    build_app,
    json_lines,
    post_chat,
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
    lines = json_lines(log_lines)
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
        assert post_chat(client).status_code == 200
    text = log_lines.getvalue()
    assert "TOP-SECRET-PROMPT" not in text
    assert KEY not in text
    assert "SECRET-key" not in text
    assert "iVBORw0KGgo" not in text
    assert "base64" not in text
    assert "authorization" not in text.lower()

    setup_logging(LogConfig(format="json", log_prompts=True, prompt_chars=30), stream=log_lines)
    with TestClient(build_app()) as client:
        post_chat(client)
    last = json_lines(log_lines)[-1]
    assert last["prompt"] == PROMPT[:30]
    assert KEY not in log_lines.getvalue()
    assert "iVBORw0KGgo" not in log_lines.getvalue()


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
    lines = json_lines(log_lines)  # every line is JSON, library ones included
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
