"""Property-based API fuzzing: schemathesis against the served ``/schema/openapi.json``.

Policy: cases generated from the document the server publishes go to a real server process with
the tiny random model. Every response must be free of 5xx and conform to the document: a
documented status (the chat route documents every status it answers), a documented content
type, the documented headers, and a body valid against its schema, SSE events included.
Negative cases (bodies the schema calls invalid) must be refused with 4xx. The error statuses
fuzzing cannot reach (401, 404, 413, 415) are sent once each and checked the same way.

The run is bounded so the module takes well under two minutes on two cores: a fixed number of
examples per operation, derandomized (a stable CI gate; a change to the document changes the
cases), and generation capped at a few tokens.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NegativeDataRejectionConfig
from schemathesis.specs.openapi.adapter.validators import validate_v3
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.openapi import CHAT_ERROR_STATUSES
from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
CHAT_EXAMPLES = {GenerationMode.POSITIVE: 200, GenerationMode.NEGATIVE: 150}
OTHER_EXAMPLES = 10
MAX_TOKENS = 4
# The tiny model's context (tokens): a larger max_tokens is refused before any generation
# (context_length_exceeded), so only values at or below it need capping.
CONTEXT = 32768
MAX_BODY = 256 * 1024
KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
# status_code_conformance only where the document lists every status: the other routes' 404
# and 405 answers are not in their (Litestar-generated) responses.
CHECKS = [
    not_a_server_error,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
IMAGE = data_url(make_image(64, 48))
UNKNOWN_MODEL = {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, at the defaults but for: remote image fetching off, so no generated
    URL can make the server connect anywhere (tests talk to loopback only); a small default
    completion length for bodies that set none; an API key and a small body limit, so 401 and
    413 can be checked too. Its caches and metrics stay out of the shared server's tests."""
    srv = Server(
        tiny_model_dir,
        tmp_path_factory.mktemp("fuzz") / "server.log",
        VLM_GATEWAY_GUARD__REMOTE_FETCH="false",
        VLM_GATEWAY_SERVER__MAX_TOKENS_DEFAULT=str(MAX_TOKENS),
        VLM_GATEWAY_SERVER__MAX_BODY_BYTES=str(MAX_BODY),
        VLM_GATEWAY_API_KEYS=KEY,
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api(fuzz_server: Server) -> schemathesis.BaseSchema:
    # Loaded from the live server (not the in-process app): the document under test is the one
    # clients get. schemathesis' lazy pytest loader (`schemathesis.pytest.from_fixture`) fails
    # under pytest 9.2 (it sets `Node._nodeid`), so cases come from `as_strategy` with `@given`.
    # A negative body larger than the server's limit is refused by its size (413) before
    # validation: a rejection as good as a 400. Long generated strings make such bodies.
    rejections = [*NegativeDataRejectionConfig._DEFAULT_EXPECTED_STATUSES, "413"]
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejections}}}
    )
    return schemathesis.openapi.from_url(
        f"{fuzz_server.base_url}/schema/openapi.json", config=config
    )


def served_model(server: Server) -> str:
    models = httpx.get(f"{server.base_url}/v1/models", headers=AUTH).json()
    return str(models["data"][0]["id"])


def bound(body: Any, model: str) -> None:
    """Rewrites that keep a body exactly as valid or invalid as generated (a valid value becomes
    another valid value), so a negative case stays negative: the served model name instead of
    a random one, and at most MAX_TOKENS tokens where the server would generate more."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str) and 1 <= len(body["model"]) <= 256:
        body["model"] = model
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if type(value) is int and MAX_TOKENS < value <= CONTEXT:
            body[key] = MAX_TOKENS


def steer(body: dict[str, Any], untyped: dict[str, list[str]], image: bool, stream: bool) -> None:
    """Turn a valid body into one the server serves more often, keeping it valid, so positive
    cases reach generation, images and streaming instead of stopping at a semantic 400.

    The document types some fields as anything (``{}``): known OpenAI fields the server refuses
    unless neutral; they are dropped. JSON Schema calls ``1.0`` an integer, msgspec does not."""
    for key in untyped["request"]:
        body.pop(key, None)
    for key in ("seed", "n", "max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), float):
            body[key] = int(body[key])
    if body.get("n") is not None:
        body["n"] = 1
    if stream:
        body["stream"] = True
    if body.get("stream") is not True:
        body.pop("stream_options", None)
    for message in body["messages"]:
        for key in untyped["message"]:
            message.pop(key, None)
        if message["role"] in ("tool", "function"):
            message["role"] = "user"
        if message["role"] != "assistant" and message.get("content") is None:
            message["content"] = "Describe it."
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part["type"] == "image_url":
                    message["role"] = "user"
                    if image:
                        part["image_url"]["url"] = IMAGE
    if not any(message["role"] == "user" for message in body["messages"]):
        body["messages"].append({"role": "user", "content": "Describe it."})


def untyped_fields(api: schemathesis.BaseSchema) -> dict[str, list[str]]:
    schemas = api.raw_schema["components"]["schemas"]
    return {
        part: [name for name, prop in schemas[struct]["properties"].items() if prop == {}]
        for part, struct in (("request", "ChatCompletionRequest"), ("message", "ChatMessage"))
    }


def test_document_is_valid_openapi_and_describes_the_chat_body(
    api: schemathesis.BaseSchema,
) -> None:
    document = api.raw_schema
    validate_v3(document)  # OpenAPI 3.1's own schema; raises on any violation
    assert document["openapi"].startswith("3.1")
    chat = document["paths"][CHAT]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(request["required"])
    assert set(chat["responses"]) == {"200", *map(str, CHAT_ERROR_STATUSES)}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


@pytest.mark.parametrize("mode", list(CHAT_EXAMPLES), ids=lambda mode: mode.value)
def test_fuzz_chat(api: schemathesis.BaseSchema, fuzz_server: Server, mode: GenerationMode) -> None:
    model, untyped = served_model(fuzz_server), untyped_fields(api)
    operation = api[CHAT]["POST"]
    answers: collections.Counter[tuple[int, str]] = collections.Counter()

    @given(
        case=operation.as_strategy(generation_mode=mode), image=st.booleans(), stream=st.booleans()
    )
    @settings(
        max_examples=CHAT_EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, image: bool, stream: bool) -> None:
        bound(case.body, model)
        if mode is GenerationMode.POSITIVE:
            steer(case.body, untyped, image, stream)
        response = case.call_and_validate(
            base_url=fuzz_server.base_url,
            headers=AUTH,
            checks=[*CHECKS, status_code_conformance],
            timeout=60,
        )
        media_type = response.headers.get("content-type", [""])[0].split(";")[0]
        answers[response.status_code, media_type] += 1

    fuzz()
    if mode is GenerationMode.POSITIVE:
        # The steering works: generation ran, as JSON and as a stream (else the fuzz is vacuous).
        assert answers[200, "application/json"], answers
        assert answers[200, "text/event-stream"], answers
    else:
        assert all(400 <= status < 500 for status, _ in answers), answers


def test_fuzz_other_operations(api: schemathesis.BaseSchema, fuzz_server: Server) -> None:
    for result in api.get_all_operations():
        operation = result.ok()
        if operation.path != CHAT:
            fuzz_positive(operation, fuzz_server.base_url)


def fuzz_positive(operation: Any, base_url: str) -> None:
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(
        max_examples=OTHER_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS, timeout=60)

    fuzz()


@pytest.mark.parametrize(
    ("status", "headers", "content"),
    [
        (401, {"Content-Type": "application/json"}, b"{}"),
        (404, {**AUTH, "Content-Type": "application/json"}, json.dumps(UNKNOWN_MODEL).encode()),
        (413, {**AUTH, "Content-Type": "application/json"}, b" " * (MAX_BODY + 1)),
        (415, {**AUTH, "Content-Type": "text/plain"}, b"{}"),
        (400, {**AUTH, "Content-Type": "application/json"}, b'{"model": '),
    ],
    ids=["no-key", "unknown-model", "too-large", "not-json", "malformed"],
)
def test_unreachable_errors_match_the_document(
    api: schemathesis.BaseSchema,
    fuzz_server: Server,
    status: int,
    headers: dict[str, str],
    content: bytes,
) -> None:
    """Statuses fuzzing cannot reach (it always sends the key, valid JSON, the served model)."""
    response = httpx.post(f"{fuzz_server.base_url}{CHAT}", headers=headers, content=content)
    assert response.status_code == status, response.text
    case = api[CHAT]["POST"].Case(body=UNKNOWN_MODEL, media_type="application/json")
    case.validate_response(response, checks=[*CHECKS, status_code_conformance])
