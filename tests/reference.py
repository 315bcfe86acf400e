"""Ground truth for the local engine: the checkpoint driven the documented transformers way.

``Reference`` loads the model separately and runs ``model.generate`` (greedy) on the chat
template's inputs; ``expect`` turns that into what the gateway must answer for a request:
text (cut at the first stop string, as OpenAI does), finish reason and token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from adapters.base import Completion, GenerationRequest, Message
from tests.support import as_hf

__all__ = ("EOS_TOKENS", "Expected", "Reference", "assert_matches")

EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Expected:
    text: str
    finish_reason: str
    completion_tokens: int | None
    """None when a stop string cut the text (the engine stops at the token that completed it)."""
    prompt_tokens: int
    image_tokens: int


class Reference:
    """The checkpoint loaded separately and driven the documented transformers way."""

    def __init__(self, directory: Path) -> None:
        self.processor = AutoProcessor.from_pretrained(directory)
        self.model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
        self.eos = set(self.processor.tokenizer.convert_tokens_to_ids(list(EOS_TOKENS)))

    def inputs(self, messages: Sequence[Message]) -> Any:
        return self.processor.apply_chat_template(
            as_hf(list(messages)),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )

    def generate(self, messages: Sequence[Message], max_new_tokens: int, **extra: Any) -> list[int]:
        """Greedy completion token ids (the end-of-turn token included when it came)."""
        inputs = self.inputs(messages)
        if "mm_encoder_outputs" in extra:
            inputs.pop("pixel_values")
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, **extra, do_sample=False, max_new_tokens=max_new_tokens
            )
        return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]

    def text(self, ids: list[int]) -> str:
        kept = ids[:-1] if ids and ids[-1] in self.eos else ids
        return str(self.processor.tokenizer.decode(kept, skip_special_tokens=True))

    def expect(self, request: GenerationRequest) -> Expected:
        """What a greedy ``request`` must produce."""
        assert not request.sampling.temperature, "the reference is greedy"
        ids = self.generate(request.messages, request.sampling.max_tokens)
        text = self.text(ids)
        inputs = self.inputs(request.messages)
        grid = inputs.get("image_grid_thw")
        image_tokens = 0 if grid is None else int(grid.prod(-1).sum()) // 4
        prompt_tokens = int(inputs["input_ids"].shape[1])
        cuts = [text.index(s) for s in request.sampling.stop if s in text]
        if cuts:
            return Expected(text[: min(cuts)], "stop", None, prompt_tokens, image_tokens)
        reason = "stop" if ids and ids[-1] in self.eos else "length"
        return Expected(text, reason, len(ids), prompt_tokens, image_tokens)


def assert_matches(got: Completion, expected: Expected) -> None:
    assert (got.text, got.finish_reason) == (expected.text, expected.finish_reason)
    assert got.usage.prompt_tokens == expected.prompt_tokens
    assert got.usage.image_tokens == expected.image_tokens
    if expected.completion_tokens is not None:
        assert got.usage.completion_tokens == expected.completion_tokens
