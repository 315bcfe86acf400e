"""Turn chat messages into Qwen3-VL model inputs, with user text kept as text.

Policy (SECURITY.md rule 8): special tokens typed by a user (``<|image_pad|>``, ``<|im_start|>``)
are text, never structure; there is exactly one image placeholder per real image.

How: the processor's chat template is rendered with a unique sentinel in place of each text
segment, so user text never passes through Jinja. The rendered string is split on the sentinels
and on the special tokens the template itself wrote. The template's special tokens become their
ids (each ``<|image_pad|>`` expanded to its image's token count); the text between them, template
text and user text joined, is tokenized with special-token parsing disabled. Text is cut only where
a whole-string tokenization would cut it (at special tokens), so for text without special tokens
the result equals ``processor.apply_chat_template(..., tokenize=True)`` exactly.

Function calling: the tools are passed to the template (which describes them in the system turn;
every string in them is a sentinel too, replaced by its JSON-escaped text, so the rendering equals
the template's ``tojson``). An assistant turn's calls are rendered by the template, their name and
arguments as sentinels; arguments that parse as JSON are re-serialised as the template's ``tojson``
writes a dict (the form the model writes). A ``tool`` turn's content is text and images like a
user turn's.

Images arrive at the size the model sees (``ImageInput``), so the image processor is told not to
resize them: the grid is exactly ``(1, height / patch, width / patch)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer

from adapters.base import (
    AdapterError,
    Capabilities,
    GenerationRequest,
    ImageInput,
    Message,
    SamplingParams,
    Tools,
)

__all__ = ("PromptBuilder", "PromptInputs", "warmup_request")

_SENTINEL_RE = re.compile("\U000f0000(\\d+)\U000f0001")


def _sentinel(index: int) -> str:
    # Supplementary private-use code points: no template writes them.
    return f"\U000f0000{index}\U000f0001"


@dataclass(frozen=True, eq=False)
class PromptInputs:
    """One prompt, tokenized, with its images preprocessed (batch of one)."""

    input_ids: torch.Tensor
    """``(1, prompt_tokens)`` int64."""
    mm_token_type_ids: torch.Tensor
    """``(1, prompt_tokens)`` int64: 1 at image placeholder tokens, else 0 (M-RoPE needs it)."""
    images: tuple[ImageInput, ...]
    """The request's images, in placeholder order."""
    image_tokens: tuple[int, ...]
    """Placeholder tokens per image."""
    pixel_values: torch.Tensor | None
    """``(patches, channels * temporal_patch * patch * patch)`` float32, all images, or None."""
    image_grid_thw: torch.Tensor | None
    """``(images, 3)`` int64 patch grid per image, or None."""

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.ones_like(self.input_ids)

    def model_inputs(self, *, pixels: bool = True) -> dict[str, torch.Tensor]:
        """The keyword arguments for ``generate``: the processor's keys, same dtypes and shapes.

        ``pixels=False`` leaves out ``pixel_values`` (vision features are passed precomputed).
        """
        inputs = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
        }
        if self.image_grid_thw is not None:
            if pixels and self.pixel_values is not None:
                inputs["pixel_values"] = self.pixel_values
            inputs["image_grid_thw"] = self.image_grid_thw
        return inputs


class PromptBuilder:
    """Builds ``PromptInputs`` with a Qwen3-VL processor; thread-safe (never mutates it)."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        tokenizer = processor.tokenizer
        self._tokenizer = tokenizer
        image_processor = processor.image_processor
        self._patch = int(image_processor.patch_size)
        self._merge = int(image_processor.merge_size)
        self.image_token = str(processor.image_token)
        self.image_token_id = int(processor.image_token_id)
        specials = sorted(
            (t.content for t in tokenizer.added_tokens_decoder.values() if t.special),
            key=len,
            reverse=True,
        )
        self._special_ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in specials}
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        # A private copy of the Rust tokenizer that never parses special tokens: the shared one
        # keeps that switch as mutable state, so toggling it per call would race other threads.
        self._plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._plain.no_padding()
        self._plain.no_truncation()
        self._plain.encode_special_tokens = True

    @property
    def image_factor(self) -> int:
        return self._patch * self._merge

    def build(self, messages: Sequence[Message], tools: Tools | None = None) -> PromptInputs:
        """Tokenize ``messages`` (and the ``tools`` they may call) with the generation prompt
        appended; preprocess the images.

        Raises ``AdapterError`` if an image side is not a multiple of ``image_factor`` or an
        image sits where the chat template has no placeholder for it (system, assistant).
        """
        texts: list[str] = []
        images: list[ImageInput] = []
        conversation: list[dict[str, Any]] = []

        def text(value: str) -> str:
            texts.append(value)
            return _sentinel(len(texts) - 1)

        for message in messages:
            parts: list[dict[str, str]] = []
            for part in message.content:
                if isinstance(part, ImageInput):
                    images.append(part)
                    parts.append({"type": "image"})
                elif part:  # no empty parts: the template tests a turn's content for truth
                    parts.append({"type": "text", "text": text(part)})
            turn: dict[str, Any] = {"role": message.role, "content": parts}
            if message.tool_calls:
                turn["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {"name": text(c.name), "arguments": text(_json(c.arguments))},
                    }
                    for c in message.tool_calls
                ]
            conversation.append(turn)
        described: dict[str, Any] = {}
        if tools is not None and tools.specs:
            described["tools"] = [_strings(spec.as_openai(), text) for spec in tools.specs]
        rendered = self._processor.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **described
        )
        pixel_values, grid = self.preprocess(images)
        per_image = [int(g.prod()) // self._merge**2 for g in grid] if grid is not None else []
        ids = self._encode(rendered, texts, per_image)
        input_ids = torch.tensor([ids], dtype=torch.long)
        mm_token_type_ids = (input_ids == self.image_token_id).long()
        if int(mm_token_type_ids.sum()) != sum(per_image):
            raise AdapterError("Images are only supported in user messages.")
        return PromptInputs(
            input_ids=input_ids,
            mm_token_type_ids=mm_token_type_ids,
            images=tuple(images),
            image_tokens=tuple(per_image),
            pixel_values=pixel_values,
            image_grid_thw=grid,
        )

    def _encode(self, rendered: str, texts: list[str], per_image: list[int]) -> list[int]:
        ids: list[int] = []
        run: list[str] = []
        images = iter(per_image)

        def flush() -> None:
            if run:
                ids.extend(self._plain.encode("".join(run), add_special_tokens=False).ids)
                run.clear()

        for i, piece in enumerate(_SENTINEL_RE.split(rendered)):
            if i % 2:
                run.append(texts[int(piece)])
                continue
            for j, chunk in enumerate(self._special_re.split(piece)):
                if not j % 2:
                    run.append(chunk)
                    continue
                flush()
                if chunk == self.image_token:
                    count = next(images, None)
                    if count is None:
                        raise AdapterError("Images are only supported in user messages.")
                    ids.extend([self.image_token_id] * count)
                else:
                    ids.append(self._special_ids[chunk])
        flush()
        return ids

    def preprocess(
        self, images: Sequence[ImageInput]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pixel_values, image_grid_thw)`` for ``images`` at their own size; Nones if empty."""
        if not images:
            return None, None
        factor = self.image_factor
        for image in images:
            width, height = image.size
            if width % factor or height % factor or not width or not height:
                raise AdapterError(f"Image sides must be positive multiples of {factor} pixels.")
        out = self._processor.image_processor(
            images=[image.image for image in images], do_resize=False, return_tensors="pt"
        )
        return out["pixel_values"], out["image_grid_thw"]


def _json(arguments: str) -> str:
    """A call's arguments as the template writes a dict (``tojson``), else as they are."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to re-serialise
        return arguments


def _strings(value: Any, text: Callable[[str], str]) -> Any:
    """``value`` with every string (keys too) a sentinel for its JSON-escaped text."""
    if isinstance(value, str):
        return text(json.dumps(value, ensure_ascii=False)[1:-1])
    if isinstance(value, dict):
        return {_strings(k, text): _strings(v, text) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strings(v, text) for v in value]
    return value


def warmup_request(capabilities: Capabilities) -> GenerationRequest:
    """A short generation about a small gray image, to run once before serving."""
    width, height = capabilities.fit(64, 64)
    image = ImageInput(Image.new("RGB", (width, height), (128, 128, 128)), digest="warmup")
    return GenerationRequest(
        messages=(Message("user", (image, "Describe the image.")),),
        sampling=SamplingParams(max_tokens=2, temperature=0.0),
        request_id="warmup",
    )
