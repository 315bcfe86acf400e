"""What every generation shares: its inputs (prepared off the worker thread), the model runner, the
generation settings and the incremental text with stop strings.

A request is prefilled by ``adapters.local.sequence.Prefill`` and then decoded in the running
batch (``adapters.local.batching``); a request alone is a batch of one.

Sampling follows the OpenAI request, not the checkpoint's ``generation_config.json`` (Qwen3-VL
ships ``top_k=20``, ``temperature=0.7``): temperature 0 is greedy decoding; otherwise plain
multinomial sampling at ``temperature`` with nucleus ``top_p`` and no top-k. Only the end-of-turn
token ids come from the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.base import SamplingParams
from adapters.local.modes import WeightModes
from adapters.local.prefix import PrefixUse
from adapters.local.prompt import PromptInputs
from adapters.local.vision import VisionFeatures, encode_images, encode_pieces
from adapters.stops import StopMatcher

__all__ = ("GenerationInputs", "ModelRunner", "TextAssembler")


class TextAssembler:
    """Token ids in, safe text out: incremental detokenization plus stop-string cutting.

    Text is released once it no longer ends in a partial UTF-8 character (``\\ufffd``), decoding a
    small window of recent tokens each time (TGI's prefix/read offsets), so the pieces joined
    equal ``decode(all ids)``.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._matcher = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        """A stop string was seen; later tokens are ignored."""
        return self._matcher.stopped

    def add(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return self._matcher.feed(text[len(before) :])

    def finish(self) -> str:
        """Whatever is left at the end of generation (incomplete characters included)."""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        return self._matcher.feed(text[len(before) :]) + self._matcher.flush()


@dataclass(frozen=True, eq=False)
class GenerationInputs:
    """Everything one generation needs, prepared off the worker thread."""

    prompt: PromptInputs
    sampling: SamplingParams
    logits_processors: tuple[Any, ...] = ()
    """Extra ``transformers.LogitsProcessor`` instances (``response_format`` constraints)."""
    features: tuple[VisionFeatures, ...] | None = None
    """Vision features of the images after the reused prefix (all images without one), computed
    beforehand (embedding cache); None: encode every image here."""
    vision_seconds: float = 0.0
    """Seconds spent computing ``features`` (reported as the ``vision_encode`` timing)."""
    prefix: PrefixUse | None = None
    """Start from a cached prefix and/or keep this generation's key/value cache."""
    cached_tokens: int = 0
    """Prompt tokens whose work was reused (reported in ``Usage.cached_tokens``)."""


class ModelRunner:
    """The model-side half of the adapter; every method runs on the worker thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        modes: WeightModes | None = None,
    ) -> None:
        self.model = model
        self.modes = WeightModes() if modes is None else modes
        """What loading applied (int8, prepacking, compile); its ``key`` is in every cache key."""
        self.tokenizer = tokenizer
        self.device = model.device
        self.eos_token_ids = frozenset(eos_token_ids)
        self.eos_list = list(eos_token_ids)
        self.pad_token_id = pad_token_id

    def encode(self, prompt: PromptInputs) -> list[VisionFeatures]:
        """Vision features of the prompt's images, one per image, in order."""
        if prompt.pixel_values is None or prompt.image_grid_thw is None:
            return []
        return self.encode_pixels(prompt.pixel_values, prompt.image_grid_thw)

    def encode_pixels(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> list[VisionFeatures]:
        """Vision features from the image processor's output (any device), one per image."""
        return encode_images(
            self.model, pixel_values.to(self.device), image_grid_thw.to(self.device)
        )

    def encode_pieces(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, worker: Any
    ) -> Generator[None, None, list[VisionFeatures]]:
        """``encode_pixels`` a few blocks per step of ``worker`` (a ``ModelWorker``)."""
        return encode_pieces(
            self.model,
            pixel_values.to(self.device),
            image_grid_thw.to(self.device),
            lambda: worker.budget,
        )

    def features(
        self, inputs: GenerationInputs, timings: dict[str, float]
    ) -> tuple[VisionFeatures, ...]:
        """Vision features of the images after the reused prefix: the inputs' own (recording
        their ``vision_encode`` time), or encoded here when the inputs carry none."""
        prompt = inputs.prompt
        if not prompt.images:
            return ()
        if inputs.features is not None:
            timings["vision_encode"] = inputs.vision_seconds
            return inputs.features
        start = time.perf_counter()
        features = tuple(self.encode(prompt))
        timings["vision_encode"] = time.perf_counter() - start
        return features

    def decode(self, ids: list[int]) -> str:
        """Token ids to text, special tokens left out."""
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
