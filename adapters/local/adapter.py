"""The local model backend: a Qwen3-VL checkpoint run in-process with transformers and torch.

``LocalVLMAdapter(config)`` reads the checkpoint's config and processor at construction
(fast; raises ``ModelUnavailable`` at once for a missing model), loads the weights in ``start()``
on its worker thread and warms up with a small image. Every model call runs on that one thread
(``adapters.local.worker``); prompts are built and images preprocessed in a thread pool
(``adapters.local.prompt``); the event loop only awaits.

Work is reused across requests (``adapters.local.reuse``): cached key/value prefixes and cached
image features. There is one generation path, continuous batching (``adapters.local.batching``):
chunked prefill, then one decode token per sequence per forward pass, within a key/value memory
budget, every step bounded by ``LocalModelConfig.step_tokens``/``step_seconds`` (``worker``). A
request alone is a batch of one.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoConfig, AutoProcessor

from adapters.base import (
    AdapterError,
    Capabilities,
    Finish,
    GenerationRequest,
    ImageInput,
    ModelUnavailable,
    PromptTooLong,
    StreamEvent,
    collect,
)
from adapters.local.batching import DecodeBatch
from adapters.local.cache import (
    ALL_CACHES,
    CACHES_OFF,
    CacheName,
    CacheObserver,
    CachePolicy,
    CacheStats,
)
from adapters.local.decoding import logits_processors
from adapters.local.generation import GenerationInputs, ModelRunner
from adapters.local.jobs import EngineObserver
from adapters.local.loading import LocalModelConfig, from_pretrained, load_runner
from adapters.local.memory import default_kv_budget, free_memory
from adapters.local.modes import WeightModes
from adapters.local.prompt import PromptBuilder, warmup_request
from adapters.local.reuse import Reuse, encoder_identity
from adapters.local.toolcalls import ToolCallParser
from adapters.local.vision import VisionFeatures
from adapters.local.worker import ModelWorker

__all__ = ("CachePolicy", "GenerationFailed", "LocalModelConfig", "LocalVLMAdapter")

T = TypeVar("T")

_SUPPORTED_MODEL_TYPES = frozenset({"qwen3_vl", "qwen3_vl_moe"})


class GenerationFailed(AdapterError):
    """The model raised during generation (a bug or resource exhaustion); details are logged."""

    def __init__(self) -> None:
        super().__init__("The model failed while generating; see the server log.")


class LocalVLMAdapter:
    """A Qwen3-VL model in this process, behind the ``Adapter`` contract."""

    def __init__(
        self,
        config: LocalModelConfig,
        *,
        model_id: str | None = None,
        cache_observer: CacheObserver | None = None,
        engine_observer: EngineObserver | None = None,
    ) -> None:
        """Read the model's config and processor (raises ``ModelUnavailable``); no weights yet.

        ``model_id``: the served name in ``capabilities`` (default: ``config.model``, or the
        directory's name for a path). ``cache_observer``: told about cache hits, misses,
        evictions and sizes (metrics); ``cache_stats()`` reads the same figures.
        ``engine_observer``: told about scheduling steps, key/value memory and token gaps.
        """
        self.config = config
        self._source = os.path.expanduser(config.model)
        if not self._source:
            raise ModelUnavailable("No model configured.")
        self._hf_config = self._pretrained(AutoConfig.from_pretrained)
        model_type = getattr(self._hf_config, "model_type", None)
        if model_type not in _SUPPORTED_MODEL_TYPES:
            raise ModelUnavailable(
                f"Model {self._source!r} is a {model_type!r} model; this server runs Qwen3-VL "
                "vision-language models (model_type 'qwen3_vl')."
            )
        self._processor = self._pretrained(AutoProcessor.from_pretrained)
        self._builder = PromptBuilder(self._processor)
        self.capabilities = self._capabilities(model_id)
        self._engine_observer = engine_observer
        self._worker = ModelWorker(
            step_tokens=config.step_tokens,
            step_seconds=config.step_seconds,
            fair_wait_s=config.fair_wait_s,
            observer=engine_observer,
        )
        self._batch: DecodeBatch | None = None
        """The running batch, which holds the loaded model (``runner``); None until loaded."""
        self._start_lock = asyncio.Lock()
        self._reuse = Reuse(config.cache, self._builder, self._worker, cache_observer)

    @property
    def weight_modes(self) -> WeightModes:
        """What loading applied to the weights (int8, prepacking, compile); plain before
        ``start()``."""
        return self._batch.runner.modes if self._batch is not None else WeightModes()

    @property
    def worker(self) -> ModelWorker:
        """The model's thread (for health checks: ``pending``, ``wait_idle``)."""
        return self._worker

    async def start(self) -> None:
        """Load the weights on the worker thread, then warm up (``config.warmup``)."""
        async with self._start_lock:
            if self._batch is not None:
                return
            self._worker.start()
            batch = await self._worker.call(self._load)
            runner = batch.runner
            caps = self.capabilities
            self._reuse.identity = encoder_identity(
                caps.model_id, caps.revision, self._source, runner, self._processor.image_processor
            )
            self._batch = batch
            if self.config.warmup:
                await collect(self.stream(warmup_request(self.capabilities), caches=CACHES_OFF))

    async def stream(
        self, request: GenerationRequest, *, caches: CachePolicy = ALL_CACHES
    ) -> AsyncIterator[StreamEvent]:
        """See ``Adapter.stream``. Closing this iterator cancels the generation.

        ``caches``: which caches this request may read and fill (a debugging bypass).
        """
        batch = self._running()
        runner = batch.runner
        sampling = request.sampling
        if sampling.max_tokens < 1:
            raise AdapterError("max_tokens must be at least 1.")
        prompt = await asyncio.to_thread(self._builder.build, request.messages, request.tools)
        tokens = prompt.prompt_tokens + sampling.max_tokens
        context = min(self.capabilities.context_length, batch.max_tokens)
        if tokens > context:
            raise PromptTooLong(prompt.prompt_tokens, sampling.max_tokens, context)
        processors = await self._constraints(request)
        reuse = await self._reuse.prepare(runner, prompt, caches, request.cache_scope)
        inputs = GenerationInputs(
            prompt,
            sampling,
            processors,
            features=reuse.features,
            vision_seconds=reuse.vision_seconds,
            prefix=reuse.prefix,
            cached_tokens=reuse.cached_tokens,
        )
        job = self._worker.submit(
            functools.partial(batch.admit, inputs),
            slot=True,
            positions=(prompt.prompt_tokens, sampling.max_tokens),
            owner=request.owner,
        )
        tools = request.tools
        # Calls are parsed out of the text unless none may be made (then it is all text).
        calls = None
        if tools is not None and tools.choice != "none":
            calls = ToolCallParser(spec.name for spec in tools.callable)
        try:
            while True:
                event: StreamEvent = await job.channel.get()
                for out in calls.handle(event) if calls is not None else (event,):
                    yield out
                if isinstance(event, Finish):
                    return
        except AdapterError:
            raise
        except Exception as exc:
            raise GenerationFailed() from exc
        finally:
            # Client gone, task cancelled or done: the worker stops at its next decode step.
            job.cancel.set()

    async def check(self, request: GenerationRequest) -> None:
        """See ``Adapter.check``: compile the ``response_format`` and ``tools`` grammars (cached
        by schema), so a slow or invalid schema never holds a generation slot."""
        self._loaded()
        await self._constraints(request)

    async def encode_images(
        self,
        images: Sequence[ImageInput],
        *,
        caches: CachePolicy = ALL_CACHES,
        scope: str = "",
    ) -> list[VisionFeatures]:
        """Vision-encoder features for ``images`` (each at the size the model sees), in order.

        Served from (and stored in) the embedding cache partition ``scope`` unless
        ``caches.embedding`` is False.
        """
        runner = self._loaded()
        keys = [self._reuse.key(image, scope) for image in images]
        fetched, _ = await self._reuse.features(runner, images, keys, caches.embedding)
        return fetched.values

    def cache_stats(self) -> dict[CacheName, CacheStats]:
        """Counters (since construction) and current sizes of the embedding and prefix caches."""
        return self._reuse.stats()

    def clear_caches(self) -> None:
        """Drop every cached image feature and key/value cache (counters are kept)."""
        self._reuse.clear()

    async def aclose(self) -> None:
        """Stop the worker (cancelling any generation) and release the model."""
        await self._worker.aclose()
        self.clear_caches()
        batch, self._batch = self._batch, None
        if batch is not None:
            device = batch.runner.device
            del batch
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _loaded(self) -> ModelRunner:
        return self._running().runner

    def _running(self) -> DecodeBatch:
        if self._batch is None:
            raise AdapterError("The model is not loaded yet.")
        return self._batch

    def _load(self) -> DecodeBatch:
        config = self.config
        runner = load_runner(self._source, config, self._processor.tokenizer)
        budget = config.kv_bytes or default_kv_budget(runner.device, config.cache.prefix_bytes)
        batch = DecodeBatch(
            runner,
            config.max_batch_size,
            kv_budget=budget,
            # An explicit kv_bytes is the operator's promise; the default follows the machine.
            free_memory=None if config.kv_bytes else functools.partial(free_memory, runner.device),
            observer=self._engine_observer,
        )
        # On the worker thread: the worker reads its stepper there.
        self._worker.use(batch)
        return batch

    def _pretrained(self, loader: Callable[..., T], **kwargs: Any) -> T:
        return from_pretrained(loader, self._source, self.config, **kwargs)

    def _capabilities(self, model_id: str | None) -> Capabilities:
        text = self._hf_config.get_text_config()
        vision = self._hf_config.vision_config
        size = self._processor.image_processor.size
        source = self._source
        name = model_id or (Path(source).name if os.path.isdir(source) else source)
        return Capabilities(
            model_id=name,
            revision=self.config.revision or "main",
            context_length=min(int(text.max_position_embeddings), self.config.max_context),
            max_images=self.config.max_images,
            image_factor=int(vision.patch_size) * int(vision.spatial_merge_size),
            min_pixels=int(size["shortest_edge"]),
            max_pixels=int(size["longest_edge"]),
            supports_response_format=importlib.util.find_spec("adapters.local.constraints")
            is not None,
            supports_tools=True,
        )

    async def _constraints(self, request: GenerationRequest) -> tuple[Any, ...]:
        vocab_size = int(self._loaded().model.config.get_text_config().vocab_size)
        return await logits_processors(request, self._processor.tokenizer, vocab_size)
