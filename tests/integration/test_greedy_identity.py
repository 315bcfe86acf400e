"""Greedy decoding through the HTTP gateway equals ``model.generate`` on the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

SYSTEM = "You are a careful assistant."  # a client system message: the router adds none
NEW_TOKENS = 12


def direct_generate(model_dir: Path, messages: list[dict[str, Any]]) -> tuple[str, int]:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    new = out[0, inputs["input_ids"].shape[1] :]
    eos = set(processor.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    ids = [int(t) for t in new]
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return processor.tokenizer.decode(ids, skip_special_tokens=True), len(new)


@pytest.mark.parametrize("with_image", [False, True])
def test_gateway_greedy_equals_direct_generate(
    server: Server, tiny_model_dir: Path, with_image: bool
) -> None:
    image = make_image(320, 256, seed=7)
    user_hf: list[dict[str, Any]] = [{"type": "text", "text": "What does the picture show?"}]
    user_wire: list[dict[str, Any]] = [{"type": "text", "text": "What does the picture show?"}]
    if with_image:
        user_hf.insert(0, {"type": "image", "image": image})
        user_wire.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    expected, n_tokens = direct_generate(
        tiny_model_dir,
        [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": user_hf},
        ],
    )
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model=str(tiny_model_dir),
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_wire}],
        max_tokens=NEW_TOKENS,
        temperature=0,
    )
    assert completion.choices[0].message.content == expected
    assert completion.usage is not None
    assert completion.usage.completion_tokens == n_tokens
