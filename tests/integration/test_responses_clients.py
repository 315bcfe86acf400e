"""The Responses API from real clients against a real server (tiny random model): the openai
SDK (an image, streaming with its event iterator, a ``previous_response_id`` follow-up that does
not resend the image and is answered from the caches, structured output, a function-call round
trip, a PDF by file id) and LangChain ``ChatOpenAI(use_responses_api=True)`` with an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from tests.integration.conftest import Server
from tests.support import data_url, make_image, make_pdf

pytestmark = pytest.mark.integration

IMAGE = data_url(make_image(320, 256, seed=11))
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "parameters": SCHEMA}


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def with_image(text: str) -> list[dict[str, Any]]:
    content = [{"type": "input_image", "image_url": IMAGE}, {"type": "input_text", "text": text}]
    return [{"role": "user", "content": content}]


def create(server: Server, model: Path, **fields: Any) -> Any:
    params = {"model": str(model), "max_output_tokens": 8, "temperature": 0, **fields}
    return sdk(server).responses.create(**params)


def test_image_question_and_a_follow_up_from_the_caches(
    server: Server, tiny_model_dir: Path
) -> None:
    first = create(
        server,
        tiny_model_dir,
        input=with_image("What shapes do you see?"),
        instructions="Be terse.",
    )
    assert first.object == "response"
    assert first.status in ("completed", "incomplete")
    assert first.output[0].type == "message"
    assert first.usage.input_tokens > 80  # the image's tokens count
    # Only the new question: the server rebuilds the conversation, image included.
    follow = create(
        server,
        tiny_model_dir,
        input="And what colours are they?",
        previous_response_id=first.id,
        instructions="Be terse.",
    )
    assert follow.usage.input_tokens > first.usage.input_tokens
    assert follow.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 8
    items = sdk(server).responses.input_items.list(follow.id)
    assert [i.type for i in items.data].count("message") == 3
    assert sdk(server).responses.retrieve(follow.id).id == follow.id
    sdk(server).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        create(server, tiny_model_dir, input="Again?", previous_response_id=first.id)


def test_streaming_events(server: Server, tiny_model_dir: Path) -> None:
    params = {"model": str(tiny_model_dir), "max_output_tokens": 8, "temperature": 0}
    with sdk(server).responses.stream(input=with_image("Describe it."), **params) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    # Cut by max_output_tokens: OpenAI ends with response.incomplete (the SDK's
    # get_final_response() insists on response.completed, as it does against OpenAI).
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds
    final = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert final.output_text == deltas
    assert final.usage is not None
    assert final.usage.output_tokens > 0


def test_structured_output_and_a_function_call_round_trip(
    server: Server, tiny_model_dir: Path
) -> None:
    fmt = {"type": "json_schema", "name": "trip", "schema": SCHEMA, "strict": True}
    structured = create(
        server, tiny_model_dir, input="Plan a trip.", text={"format": fmt}, max_output_tokens=64
    )
    if structured.status == "completed":
        jsonschema.validate(json.loads(structured.output_text), SCHEMA)
    call_turn = create(
        server,
        tiny_model_dir,
        input="Weather in Paris for 3 days?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=64,
    )
    calls = [item for item in call_turn.output if item.type == "function_call"]
    assert calls
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMA)
    answer = create(
        server,
        tiny_model_dir,
        previous_response_id=call_turn.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny."}],
        tools=[WEATHER],
    )
    assert answer.status in ("completed", "incomplete")


def test_pdf_by_file_id(server: Server, tiny_model_dir: Path) -> None:
    doc = sdk(server).files.create(
        file=("invoice.pdf", make_pdf(make_image(400, 520))), purpose="user_data"
    )
    response = create(
        server,
        tiny_model_dir,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "file_id": doc.id},
                    {"type": "input_text", "text": "What is the total?"},
                ],
            }
        ],
    )
    assert response.usage.input_tokens > 80


def test_langchain_with_the_responses_api(server: Server, tiny_model_dir: Path) -> None:
    llm = ChatOpenAI(
        model=str(tiny_model_dir),
        base_url=f"{server.base_url}/v1",
        api_key="none",  # type: ignore[arg-type]
        use_responses_api=True,
        max_tokens=8,  # type: ignore[call-arg]
        temperature=0,
    )
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": IMAGE}},
        ]
    )
    reply = llm.invoke([message])
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] > 80
