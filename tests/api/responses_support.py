"""Shared pieces of the Responses API tests: the app with a store in ``tmp_path``, request
bodies, the SSE stream parsed and checked with the openai SDK's own types, a disconnecting
client."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from tests.api.conftest import MODEL, ClientFactory
from tests.api.conftest import stream_then_disconnect as chat_stream_then_disconnect
from tests.support import data_url, make_image

URL = "/v1/responses"
Fake = tuple[httpx.AsyncClient, FakeAdapter]

_events = TypeAdapter(ResponseStreamEvent)


def files(tmp_path: Path) -> dict[str, Any]:
    """The ``files`` settings section: the store under the test's own directory."""
    return {"data_dir": str(tmp_path)}


def serve(
    make_client: ClientFactory, tmp_path: Path, **sections: dict[str, Any]
) -> AbstractAsyncContextManager[Fake]:
    """The app with a tool-capable fake backend and a store in ``tmp_path``."""
    adapter = FakeAdapter(Capabilities(model_id=MODEL, supports_tools=True))
    return make_client(adapter, files=files(tmp_path), **sections)


def request(input: Any = "Hello there", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": input, **fields}


def image_message(text: str = "What is in this image?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "input_text", "text": text},
            {"type": "input_image", "image_url": data_url(make_image(320, 256)), "detail": "auto"},
        ],
    }


def answer(response: httpx.Response) -> Response:
    """A 200 JSON response, parsed by the SDK's ``Response``."""
    assert response.status_code == 200, response.text
    return Response.model_validate(response.json())


def events(response: httpx.Response) -> list[Any]:
    """The events of a 200 stream: ``event:`` names match the payloads' types, numbered from
    0, each parsed by the SDK's ``ResponseStreamEvent``; no ``[DONE]``."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == ""
    parsed = []
    for block in blocks[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: ")
        event = _events.validate_python(json.loads(data.removeprefix("data: ")))
        assert event.type == name.removeprefix("event: ")
        parsed.append(event)
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    return parsed


def error_of(response: httpx.Response, status: int, code: str, param: str | None) -> str:
    """Assert an OpenAI error envelope; its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param), error
    return str(error["message"])


async def stream_then_disconnect(app: Litestar, body: dict[str, Any], marker: bytes) -> None:
    """POST ``body`` to ``/v1/responses`` and disconnect as soon as a response chunk contains
    ``marker``."""
    await chat_stream_then_disconnect(app, body, marker, URL)
