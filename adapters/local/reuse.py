"""What a request can reuse before it reaches the model: a cached prefix, cached image features.

``Reuse.prepare`` runs per request on the event loop (matching in a helper thread, encoding on
the model's worker thread) before the generation job is queued:

1. the prompt's longest cached prefix is looked up (``adapters.local.prefix``); images inside it
   are already in its keys and values and are not encoded at all;
2. the features of the remaining images come from the embedding cache
   (``adapters.local.embedding``); the misses are encoded in one worker job, single flight across
   concurrent requests, a few encoder blocks per step (``ModelWorker.call_pieces``);
3. ``cached_tokens`` is the reused prefix: the prompt tokens whose key/value states were not
   computed again (a cached image saves its encoder run, not its tokens' prefill).

Everything is partitioned by the request's ``cache_scope``: image keys and prefix entries of
one scope are never seen by another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.base import ImageInput
from adapters.local.cache import (
    CacheConfig,
    CacheName,
    CacheObserver,
    CachePolicy,
    CacheStats,
)
from adapters.local.embedding import EmbeddingCache, Lookup
from adapters.local.generation import ModelRunner
from adapters.local.prefix import PrefixCache, PrefixUse, image_spans
from adapters.local.prompt import PromptBuilder, PromptInputs
from adapters.local.vision import VisionFeatures
from adapters.local.worker import ModelWorker

__all__ = ("Reusable", "Reuse", "encoder_identity")

_PROCESSOR_PARAMS = (
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "patch_size",
    "temporal_patch_size",
    "merge_size",
)
"""Image-processor settings that change pixel values, hence encoder outputs."""


def encoder_identity(
    model_id: str, revision: str, source: str, runner: ModelRunner, image_processor: Any
) -> tuple[str, ...]:
    """Everything besides an image's pixels that changes its encoder output, as key parts.

    The weight modes (``WeightModes.key``: int8, prepacking, compile) are all included, not only
    the vision encoder's: prefix-cache entries are matched by these image keys too, and their
    key/value states come from the language model."""
    params = sorted((name, getattr(image_processor, name, None)) for name in _PROCESSOR_PARAMS)
    return (
        model_id,
        revision,
        source,
        str(runner.model.dtype),
        str(runner.device),
        runner.modes.key,
        repr(params),
    )


@dataclass(frozen=True, eq=False)
class Reusable:
    """A request's reusable work, ready for ``GenerationInputs``."""

    features: tuple[VisionFeatures, ...]
    """Features of the images after the reused prefix, in order."""
    vision_seconds: float
    """Seconds the encoder ran for this request."""
    prefix: PrefixUse | None
    cached_tokens: int


class Reuse:
    """The adapter's two caches and the logic that decides what each request reuses."""

    def __init__(
        self,
        config: CacheConfig,
        builder: PromptBuilder,
        worker: ModelWorker,
        observer: CacheObserver | None = None,
    ) -> None:
        self.embeddings: EmbeddingCache[Hashable, VisionFeatures] = EmbeddingCache(
            config.embedding_bytes, config.embedding_ttl_s, observer=observer
        )
        self.prefixes = PrefixCache(
            config.prefix_bytes,
            config.prefix_ttl_s,
            min_tokens=config.prefix_min_tokens,
            observer=observer,
        )
        self._builder = builder
        self._worker = worker
        self.identity: tuple[str, ...] = ()
        """``encoder_identity`` of the loaded model; set once it is loaded."""

    def key(self, image: ImageInput, scope: str = "") -> Hashable:
        # The guard's digest covers the pixels and the resize; the size is repeated for safety.
        # The scope partitions the cache between tenants.
        return (*self.identity, scope, image.digest, *image.size)

    async def prepare(
        self, runner: ModelRunner, prompt: PromptInputs, caches: CachePolicy, scope: str = ""
    ) -> Reusable:
        keys = [self.key(image, scope) for image in prompt.images]
        prefix = None
        if caches.prefix and self.prefixes.enabled:
            spans = image_spans(prompt.mm_token_type_ids[0], prompt.image_tokens, keys)
            ids = prompt.input_ids[0]
            match = await asyncio.to_thread(self.prefixes.match, ids, spans, scope)
            prefix = PrefixUse(self.prefixes, spans, match, scope=scope)
        reused = prefix.reused_tokens if prefix is not None else 0
        # A prefix never ends inside an image, so an image is wholly inside it or after it.
        first = sum(1 for s in prefix.spans if s.end <= reused) if prefix is not None else 0
        fetched, seconds = await self.features(
            runner, prompt.images[first:], keys[first:], caches.embedding, prompt=prompt
        )
        # OpenAI's cached_tokens: prompt tokens whose computation was reused, which is the
        # prefix's key/value states only (a cached image's tokens still run through the model).
        return Reusable(tuple(fetched.values), seconds, prefix, reused)

    async def features(
        self,
        runner: ModelRunner,
        images: Sequence[ImageInput],
        keys: Sequence[Hashable],
        use_cache: bool,
        *,
        prompt: PromptInputs | None = None,
    ) -> tuple[Lookup[VisionFeatures], float]:
        """Features of ``images``: cached ones reused, the rest encoded in one worker job.

        ``prompt``: a prompt whose last ``len(images)`` images are ``images``, whose
        preprocessed pixels are sliced instead of preprocessing again. Returns the features and
        the seconds the encoder ran for this call.
        """
        if not images:
            return Lookup([], []), 0.0
        seconds = 0.0

        async def compute(indices: list[int]) -> list[VisionFeatures]:
            nonlocal seconds
            given: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
            if prompt is None:
                chosen = [images[i] for i in indices]
                given = await asyncio.to_thread(self._builder.preprocess, chosen)

            def encode() -> Generator[None, None, tuple[list[VisionFeatures], float]]:
                start = time.perf_counter()
                pixels, grid = given
                if prompt is not None:
                    # Sliced here, on the worker: a copy of megabytes stays off the event loop.
                    skip = len(prompt.images) - len(images)
                    pixels, grid = _slice_pixels(prompt, [skip + i for i in indices])
                assert pixels is not None
                assert grid is not None
                features = yield from runner.encode_pieces(pixels, grid, self._worker)
                return features, time.perf_counter() - start

            features, took = await self._worker.call_pieces(encode)
            seconds += took
            return features

        if use_cache:
            return await self.embeddings.fetch(keys, compute), seconds
        features = await compute(list(range(len(images))))
        return Lookup(features, [False] * len(images)), seconds

    def stats(self) -> dict[CacheName, CacheStats]:
        return {"embedding": self.embeddings.stats(), "prefix": self.prefixes.store.stats()}

    def clear(self) -> None:
        self.embeddings.clear()
        self.prefixes.clear()


def _slice_pixels(
    prompt: PromptInputs, indices: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, image_grid_thw)`` of the prompt's images at ``indices`` only."""
    grid = prompt.image_grid_thw
    assert prompt.pixel_values is not None
    assert grid is not None
    ends = [int(n) for n in grid.prod(-1).cumsum(0)]
    starts = [0, *ends[:-1]]
    pixels = torch.cat([prompt.pixel_values[starts[i] : ends[i]] for i in indices])
    return pixels, grid[list(indices)]
