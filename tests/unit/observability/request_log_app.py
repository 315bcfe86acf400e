"""A small app behind the request log for its tests: a chat route that fills the request record
as the service does, a stream that fails in band or hangs, a scrape route; and helpers to post
a chat carrying secrets and to read the JSON log lines back."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.response import ServerSentEvent
from litestar.testing import TestClient

from adapters.base import Usage
from gateway.errors import DeadlineExceeded, ImageTooLarge
from gateway.handlers import exception_handlers
from gateway.observability.telemetry import current_record, install_request_log

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


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def post_chat(client: TestClient[Any], **extra: Any) -> Any:
    content = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
