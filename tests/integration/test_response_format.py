"""``response_format`` through the real server: the tiny random model's output always parses
and validates, streaming and not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

SCHEMAS: dict[str, dict[str, Any]] = {
    "caption": {
        "type": "object",
        "properties": {"caption": {"type": "string", "maxLength": 40}},
        "required": ["caption"],
        "additionalProperties": False,
    },
    "objects": {
        "type": "object",
        "properties": {
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "label": {"type": "string", "maxLength": 12},
                        "color": {"enum": ["red", "blue", "green", "other"]},
                    },
                    "required": ["label", "color"],
                    "additionalProperties": False,
                },
                "maxItems": 3,
            },
            "count": {"type": "integer", "minimum": 0, "maximum": 10},
        },
        "required": ["objects", "count"],
        "additionalProperties": False,
    },
    "reading": {
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "unit": {"enum": ["cm", "kg", "s"]},
            "confident": {"type": "boolean"},
        },
        "required": ["value", "unit", "confident"],
        "additionalProperties": False,
    },
}


def request(model: Path, schema: str | None, **extra: Any) -> dict[str, Any]:
    fmt: dict[str, Any] = (
        {"type": "json_object"}
        if schema is None
        else {"type": "json_schema", "json_schema": {"name": schema, "schema": SCHEMAS[schema]}}
    )
    content = [
        {"type": "text", "text": "Describe the shapes as JSON."},
        {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256, seed=3))}},
    ]
    return {
        "model": str(model),
        "messages": [{"role": "user", "content": content}],
        "response_format": fmt,
        "max_tokens": 160,
        **extra,
    }


@pytest.mark.parametrize("schema", [None, *SCHEMAS])
@pytest.mark.parametrize("stream", [False, True])
def test_output_parses_and_validates(
    server: Server, tiny_model_dir: Path, schema: str | None, stream: bool
) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    params = request(tiny_model_dir, schema, temperature=0.8, seed=11)
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(**params, stream=True)
            if c.choices
        )
    else:
        completion = client.chat.completions.create(**params)
        assert completion.choices[0].finish_reason == "stop"
        text = completion.choices[0].message.content or ""
    value = json.loads(text)
    if schema is None:
        assert isinstance(value, dict)
    else:
        jsonschema.validate(value, SCHEMAS[schema])


def test_invalid_schema_is_a_400(server: Server, tiny_model_dir: Path) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    params = request(tiny_model_dir, "caption")
    params["response_format"]["json_schema"]["schema"] = {"type": "object", "properties": 5}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**params)
    assert info.value.code == "invalid_value"
    assert info.value.param == "response_format"
