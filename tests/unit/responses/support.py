"""Shared pieces of the Responses unit tests: request bodies and the SDK's own validators."""

from __future__ import annotations

import json
from typing import Any

from openai.types.responses import ResponseInputItem, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.responses.items import decode_create
from gateway.responses.protocol import CreateResponse

IMAGE = "data:image/png;base64,iVBORw0KGgo="

sdk_event = TypeAdapter(ResponseStreamEvent)
sdk_item = TypeAdapter(ResponseItem)
sdk_input_item = TypeAdapter(ResponseInputItem)


def create(**fields: Any) -> CreateResponse:
    """A decoded request: ``model`` plus ``fields``; any ``input`` list is first checked to be
    valid input for the openai SDK (what a client can send)."""
    if isinstance(fields.get("input"), list):
        for item in fields["input"]:
            sdk_input_item.validate_python(item)
    return decode_create(json.dumps({"model": "m", **fields}).encode())
