"""The vision encoder run a few blocks per step (``encode_pieces``) gives exactly what the model's
own ``get_image_features`` gives, however small the step budget, on the tiny random Qwen3-VL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from adapters.local.jobs import StepBudget
from adapters.local.prompt import PromptBuilder
from adapters.local.vision import encode_images, encode_pieces
from tests.integration.batching_support import PROMPTS


@pytest.mark.parametrize("step_tokens", [1, 10_000])
def test_pieces_equal_the_whole_encoder(tiny_model_dir: Path, step_tokens: int) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt = PromptBuilder(AutoProcessor.from_pretrained(tiny_model_dir)).build(PROMPTS["two"])
    assert prompt.pixel_values is not None
    assert prompt.image_grid_thw is not None
    budget = StepBudget(step_tokens)
    pieces = encode_pieces(model, prompt.pixel_values, prompt.image_grid_thw, lambda: budget)
    steps = 0
    with torch.inference_mode():
        whole = encode_images(model, prompt.pixel_values, prompt.image_grid_thw)
        while True:
            budget = StepBudget(step_tokens)
            try:
                next(pieces)
            except StopIteration as stop:
                got = stop.value
                break
            steps += 1
    depth = len(model.model.visual.blocks)
    # One block per step on the smallest budget (a pause after each but the last), else at once.
    assert steps == (depth - 1 if step_tokens == 1 else 0)
    assert len(got) == len(whole) == 2
    for g, w in zip(got, whole, strict=True):
        assert torch.equal(g.embeds, w.embeds)
        assert len(g.deepstack) == len(w.deepstack) > 0
        for a, b in zip(g.deepstack, w.deepstack, strict=True):
            assert torch.equal(a, b)
