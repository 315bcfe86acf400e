"""Shared pieces of the function-calling API tests: tools, requests, answers, stream chunks
(the tool-capable fake is the ``tool_fake`` fixture of ``tests/api/conftest.py``)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from adapters.base import ToolCall
from adapters.testing import ToolAnswer
from tests.api.conftest import MODEL
from tests.support import data_url, make_image

URL = "/v1/chat/completions"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PARIS = ToolCall("call_paris", "get_weather", '{"city": "Paris", "unit": "c"}')
CLOCK = ToolCall("call_clock", "get_time", "{}")


def tools_request(content: Any = "What is the weather in Paris?", **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "tools": [WEATHER, TIME],
        **fields,
    }


def ocr_content() -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": "Transcribe the text in this image."},
        {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
    ]


def calls(*tool_calls: ToolCall, text: str = "") -> ToolAnswer:
    return ToolAnswer(tool_calls, text)


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON chunks of a stream (``[DONE]`` checked and dropped)."""
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
