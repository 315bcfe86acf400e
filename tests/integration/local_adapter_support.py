"""Conversations and requests shared by the LocalVLMAdapter tests (``test_local_adapter*.py``)."""

from __future__ import annotations

from typing import Any

from adapters.base import GenerationRequest, ImageInput, Message, SamplingParams
from tests.support import make_image


def image(width: int, height: int, seed: int = 0) -> ImageInput:
    return ImageInput(make_image(width, height, seed=seed), digest=f"{width}x{height}/{seed}")


CONVERSATIONS = {
    "text": [Message("system", ("You are terse.",)), Message("user", ("Describe the weather",))],
    "image": [Message("user", (image(320, 256), "What is in the picture?"))],
    "images": [Message("user", ("Compare", image(256, 256, 1), "with", image(288, 320, 2)))],
    "image_earlier_turn": [
        Message("user", (image(320, 256, 3), "What is it?")),
        Message("assistant", ("A red square.",)),
        Message("user", ("And the circle?",)),
    ],
}


def request(messages: list[Message], max_tokens: int = 32, **sampling: Any) -> GenerationRequest:
    fmt = sampling.pop("response_format", None)
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    return GenerationRequest(messages=tuple(messages), sampling=params, response_format=fmt)
