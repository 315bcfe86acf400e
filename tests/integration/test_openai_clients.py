"""The real ``openai`` SDK and LangChain ``ChatOpenAI`` against a real server process."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

# 320x256 is already a multiple of 32 within the pixel budget: 10 x 8 = 80 visual tokens.
IMAGE_TOKENS = 80


def image_message(text: str = "What is in this image?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
        ],
    }


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_models_list_and_retrieve(server: Server, tiny_model_dir: Any) -> None:
    client = sdk(server)
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [str(tiny_model_dir)]
    assert client.models.retrieve(ids[0]).id == ids[0]
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_sync_completion_with_image_shapes(server: Server, tiny_model_dir: Any) -> None:
    completion = sdk(server).chat.completions.create(
        model=str(tiny_model_dir), messages=[image_message()], max_tokens=8, temperature=0
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert abs(completion.created - time.time()) < 120
    assert completion.model == str(tiny_model_dir)
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > IMAGE_TOKENS  # the image's tokens are counted
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_sync_stream_with_usage(server: Server, tiny_model_dir: Any) -> None:
    stream = sdk(server).chat.completions.create(
        model=str(tiny_model_dir),
        messages=[image_message()],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert finish[0].choices[0].finish_reason in ("stop", "length")
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens <= 6
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_text_equals_non_stream_text(server: Server, tiny_model_dir: Any) -> None:
    client = sdk(server)
    params: dict[str, Any] = {
        "model": str(tiny_model_dir),
        "messages": [image_message("Describe it.")],
        "max_tokens": 10,
        "temperature": 0,
    }
    full = client.chat.completions.create(**params).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**params, stream=True)
        if c.choices
    )
    assert streamed == full


async def test_async_client_stream_and_not(server: Server, tiny_model_dir: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    completion = await client.chat.completions.create(
        model=str(tiny_model_dir), messages=[image_message()], max_tokens=4
    )
    assert completion.choices[0].message.role == "assistant"
    stream = await client.chat.completions.create(
        model=str(tiny_model_dir), messages=[image_message()], max_tokens=4, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is None  # not asked for
    await client.close()


def test_langchain_multimodal_human_message(server: Server, tiny_model_dir: Any) -> None:
    llm = ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=str(tiny_model_dir),
        max_tokens=5,
        temperature=0,
        max_retries=0,
    )
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
        ]
    )
    answer = llm.invoke([message])
    assert isinstance(answer.content, str)
    usage = answer.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > IMAGE_TOKENS
    assert usage["output_tokens"] <= 5
    streamed = list(llm.stream([message]))
    assert "".join(str(c.content) for c in streamed) == answer.content


def test_sse_framing_and_done(server: Server, tiny_model_dir: Any) -> None:
    body = {
        "model": str(tiny_model_dir),
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 3,
        "stream": True,
    }
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-gateway-task"] == "text"
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    assert events[-2] == "data: [DONE]"
    for event in events[:-2]:
        json.loads(event.removeprefix("data: "))


def test_errors_are_openai_shaped_and_server_keeps_serving(
    server: Server, tiny_model_dir: Any
) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=str(tiny_model_dir), messages=[{"role": "user", "content": "x"}], n=2
        )
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "n"
    bad = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b'{"model": "\xff"',
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"
    ok = client.chat.completions.create(
        model=str(tiny_model_dir), messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert ok.choices[0].finish_reason in ("stop", "length")
