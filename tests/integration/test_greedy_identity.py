"""Greedy decoding through the HTTP gateway, at its default settings, equals ``model.generate``.

The shared server runs with several generation slots, so requests sent together decode in one
running batch: every one of them must still be exactly what ``model.generate`` gives alone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from adapters.base import GenerationRequest, ImageInput, Message, SamplingParams
from tests.integration.conftest import Server
from tests.reference import Reference
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

SYSTEM = "You are a careful assistant."  # a client system message: the router adds none
NEW_TOKENS = 12


def conversation(question: str, seed: int | None) -> tuple[list[Message], list[dict[str, Any]]]:
    """One conversation as the engine's messages (for the reference) and as the wire sends it."""
    parts: list[Any] = [question]
    wire: list[dict[str, Any]] = [{"type": "text", "text": question}]
    if seed is not None:
        image = make_image(320, 256, seed=seed)
        parts.insert(0, ImageInput(image, digest=str(seed)))
        wire.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    messages = [Message("system", (SYSTEM,)), Message("user", tuple(parts))]
    return messages, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": wire}]


def ask(server: Server, model: Path, wire: list[dict[str, Any]], max_tokens: int) -> Any:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    return client.chat.completions.create(
        model=str(model), messages=wire, max_tokens=max_tokens, temperature=0
    )


def check(completion: Any, reference: Reference, messages: list[Message], max_tokens: int) -> None:
    request = GenerationRequest(tuple(messages), SamplingParams(max_tokens, temperature=0.0))
    expected = reference.expect(request)
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].finish_reason == expected.finish_reason
    assert completion.usage.completion_tokens == expected.completion_tokens
    assert completion.usage.prompt_tokens == expected.prompt_tokens


@pytest.mark.parametrize("seed", [None, 7])
def test_gateway_greedy_equals_direct_generate(
    server: Server, tiny_model_dir: Path, reference: Reference, seed: int | None
) -> None:
    messages, wire = conversation("What does the picture show?", seed)
    check(ask(server, tiny_model_dir, wire, NEW_TOKENS), reference, messages, NEW_TOKENS)


def test_concurrent_requests_each_equal_direct_generate(
    server: Server, tiny_model_dir: Path, reference: Reference
) -> None:
    cases = [
        (conversation("What does the picture show?", 7), 40),
        (conversation("Describe the weather", None), 30),
        (conversation("Count the shapes.", 11), 25),
        (conversation("Why?", None), 20),
        (conversation("Which colour is largest?", 12), 35),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = [pool.submit(ask, server, tiny_model_dir, w, n) for (_, w), n in cases]
        completions = [f.result() for f in futures]
    for completion, ((messages, _), n) in zip(completions, cases, strict=True):
        check(completion, reference, messages, n)
