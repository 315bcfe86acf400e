"""The OpenAPI description of the chat route, generated from the wire types the route decodes.

Policy: ``ChatController.create`` reads the raw body and decodes it with msgspec itself
(``gateway.chat.protocol.decode_request``), because Litestar's own body parsing answers 500 for
invalid UTF-8 and very deep JSON. Litestar therefore sees no ``data`` parameter and documents no
request body. This module documents the body from the very Struct the decoder uses (msgspec's
JSON Schema of ``ChatCompletionRequest``), so the document cannot drift from what the server
accepts, and nothing here takes part in parsing a request.

It also documents every response the route really gives: ``chat.completion`` JSON, an SSE stream
of ``chat.completion.chunk`` frames ending with ``data: [DONE]`` (an error after the first byte is
one ``data: {"error": ...}`` frame), and the error envelope for each status the handler, its
guards and the middleware produce. Property-based tests (tests/integration/test_fuzz.py) check
real responses against these schemas, so a wrong description fails CI.

The schemas are inserted into the document as raw JSON Schema (OpenAPI 3.1 uses JSON Schema
2020-12): Litestar's ``Schema`` dataclass would drop ``"default": null`` and other ``None``
values while serialising.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Final

import msgspec
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import OpenAPI, Operation

from gateway.chat.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest

__all__ = ("CHAT_ERROR_STATUSES", "ChatOperation", "ErrorResponse", "GatewayOpenAPIConfig")

_REF: Final = "#/components/schemas/{name}"


class ErrorDetail(msgspec.Struct, forbid_unknown_fields=True):
    """The inside of the error envelope (``gateway.errors.GatewayError.body``)."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct, forbid_unknown_fields=True):
    """``{"error": {"message", "type", "param", "code"}}``: every failure, from any layer."""

    error: ErrorDetail


CHAT_ERROR_STATUSES: Final[dict[int, str]] = {
    400: "Malformed JSON, invalid UTF-8 or nesting too deep (invalid_json); a field out of range "
    "or unsupported (invalid_value, unsupported_parameter); an image refused; the prompt plus "
    "max_tokens beyond the context (context_length_exceeded).",
    401: "Missing or wrong API key (invalid_api_key), with `WWW-Authenticate: Bearer`.",
    404: "Unknown model (model_not_found).",
    408: "The request body did not arrive in time (request_timeout).",
    413: "The body, or an image's bytes, too large (request_too_large, image_too_large).",
    415: "The body is not sent as JSON (`Content-Type: application/json`).",
    422: "The task is beyond the model and its policy is `refuse` (task_not_supported).",
    429: "Rate limited (rate_limit_exceeded), with `Retry-After`.",
    499: "The client closed the connection before the answer (logged; the client is gone).",
    500: "A bug (internal_error); the message never carries exception text.",
    503: "Overloaded, still loading or shutting down (server_overloaded, not_ready, "
    "shutting_down), with `Retry-After`.",
    504: "The request's deadline passed (timeout).",
}
"""Every error status ``POST /v1/chat/completions`` can answer, with what it means."""

_ROOTS, _COMPONENTS = msgspec.json.schema_components(
    [ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ErrorResponse], ref_template=_REF
)
_REQUEST, _COMPLETION, _CHUNK, _ERROR = _ROOTS

# One SSE event as schemathesis reads a stream: {"data": ..., "event": ..., "id"?: ...}. OpenAI
# frames carry no event name; the data is a chunk, an error frame, or the final "[DONE]".
_SSE_EVENT: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"const": "message"},
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": {
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_CHUNK, _ERROR]},
            },
        },
    },
}

_REQUEST_BODY: Final[dict[str, Any]] = {
    "description": "An OpenAI Chat Completions request. Unknown fields are ignored; known "
    "fields this server cannot honour are refused by name when set to a non-default value.",
    "required": True,
    "content": {"application/json": {"schema": _REQUEST}},
}


def _header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_RETRY_AFTER: Final = _header("Whole seconds to wait.", {"type": "integer", "minimum": 0})
# Headers by status; the other statuses carry none a client needs.
_HEADERS: Final[dict[int, dict[str, Any]]] = {
    200: {
        "x-gateway-task": _header("The task the router chose.", {"type": "string"}),
        "x-gateway-backend": _header("The backend that served the request.", {"type": "string"}),
        "x-gateway-warnings": _header(
            "Comma-separated fidelity and routing warning codes.",
            {"type": "string"},
            required=False,
        ),
    },
    401: {"WWW-Authenticate": _header("The scheme to use.", {"const": "Bearer"})},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}

_RESPONSES: Final[dict[str, Any]] = {
    "200": {
        "description": 'A `chat.completion` object; with `"stream": true`, server-sent events '
        "of `chat.completion.chunk` objects ending with `data: [DONE]`.",
        "headers": _HEADERS[200],
        "content": {
            "application/json": {"schema": _COMPLETION},
            "text/event-stream": {"schema": _SSE_EVENT},
        },
    },
    **{
        str(status): {
            "description": description,
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status, description in CHAT_ERROR_STATUSES.items()
    },
}


class ChatOperation(Operation):
    """The chat operation with its real request body and responses (see the module's policy)."""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        # Replaces Litestar's guess (an untyped 200): the handler returns a bare Response.
        schema["requestBody"] = copy.deepcopy(_REQUEST_BODY)
        schema["responses"] = copy.deepcopy(_RESPONSES)
        return schema


class _Document(OpenAPI):
    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        # Litestar documents its own validation-error body on routes with parameters; every
        # error this server answers, from any route or layer, is the OpenAI envelope instead.
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    if status[0] in "45" and "content" in response:
                        response["content"] = {"application/json": {"schema": _ERROR}}
        schemas: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, component in _COMPONENTS.items():
            # Litestar names its components after the Python class too: two different schemas
            # under one name would silently retarget the other's references.
            if schemas.get(name, component) != component:
                raise RuntimeError(f"OpenAPI component {name!r} is defined twice, differently")
            schemas[name] = copy.deepcopy(component)
        return schema


class GatewayOpenAPIConfig(OpenAPIConfig):
    """Litestar's OpenAPI configuration, adding the wire types' schemas to the document.

    Litestar replaces ``components.schemas`` with its own registry when it builds the document,
    so the components ``ChatOperation`` refers to are merged in when the document is rendered.
    """

    def to_openapi_schema(self) -> OpenAPI:
        document = super().to_openapi_schema()
        return _Document(
            **{f.name: getattr(document, f.name) for f in dataclasses.fields(document)}
        )
