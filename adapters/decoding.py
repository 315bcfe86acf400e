"""One generation on the worker thread: sampling, streaming text, stop strings, cancellation.

``ModelRunner.generate`` is the unbatched path (``max_batch_size = 1``): one ``generate`` call per
request. Under continuous batching (``adapters.batching``) a request is prefilled by
``adapters.sequence.prefill`` and decoded with the others; both share ``model_inputs``,
``TextAssembler`` and the sampling policy below.

Sampling follows the OpenAI request, not the checkpoint's ``generation_config.json`` (Qwen3-VL
ships ``top_k=20``, ``temperature=0.7``): temperature 0 is greedy decoding; otherwise plain
multinomial sampling at ``temperature`` with nucleus ``top_p`` and no top-k. Only the end-of-turn
token ids come from the checkpoint.

Each generated token passes through one ``StoppingCriteria`` that decodes it incrementally,
cuts stop strings (``StopMatcher``), sends safe text to the consumer, and halts ``generate`` in
the same step when a stop string matched or the consumer went away (``job.cancel``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from adapters.base import (
    Delta,
    Finish,
    FinishReason,
    GenerationCancelled,
    SamplingParams,
    Usage,
)
from adapters.prefix import PrefixPlan
from adapters.prompt import PromptInputs
from adapters.stops import StopMatcher
from adapters.worker import Failure, Job, VisionFeatures, encode_images, encoder_outputs

__all__ = ("GenerationPlan", "ModelRunner", "TextAssembler", "generation_config")


def generation_config(
    sampling: SamplingParams, eos_token_ids: Sequence[int], pad_token_id: int
) -> GenerationConfig:
    """The ``GenerationConfig`` for one request: every sampling knob set explicitly.

    (Greedy leaves the sampling knobs unset: transformers warns about set-but-unused ones.)
    """
    common: dict[str, Any] = {
        "max_new_tokens": sampling.max_tokens,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "eos_token_id": list(eos_token_ids),
        "pad_token_id": pad_token_id,
    }
    if not sampling.temperature or sampling.temperature <= 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(
        do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, **common
    )


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
class GenerationPlan:
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
    prefix: PrefixPlan | None = None
    """Start from a cached prefix and/or keep this generation's key/value cache."""
    cached_tokens: int = 0
    """Prompt tokens whose work was reused (reported in ``Usage.cached_tokens``)."""


@dataclass
class _Tally:
    tokens: int = 0
    """Tokens generated, the end-of-turn token included."""
    eos: bool = False
    first: float = 0.0
    """``perf_counter`` at the first token (end of prefill)."""
    last: float = 0.0


class _Progress(StoppingCriteria):
    """Called by ``generate`` once per new token, with ``input_ids`` ending in that token."""

    def __init__(self, on_token: Callable[[int], bool]) -> None:
        self._on_token = on_token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        halt = self._on_token(int(input_ids[0, -1]))
        return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)


class ModelRunner:
    """The model-side half of the adapter; every method runs on the worker thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
    ) -> None:
        self.model = model
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

    def model_inputs(self, plan: GenerationPlan, timings: dict[str, float]) -> dict[str, Any]:
        """``generate`` keyword arguments for the plan's prompt, vision features included.

        Encodes the images here when the plan carries no features; records ``vision_encode``.
        """
        prompt = plan.prompt
        kwargs: dict[str, Any] = {
            k: v.to(self.device) for k, v in prompt.model_inputs(pixels=False).items()
        }
        features = plan.features
        if features is not None:
            if prompt.images:
                timings["vision_encode"] = plan.vision_seconds
        elif prompt.images:
            start = time.perf_counter()
            features = tuple(self.encode(prompt))
            timings["vision_encode"] = time.perf_counter() - start
        if features:
            kwargs["mm_encoder_outputs"] = {"image": encoder_outputs(features)}
        return kwargs

    def reset_rope(self) -> None:
        """Forget the M-RoPE offsets the previous call left on the model.

        ``generate`` trusts ``rope_deltas`` left on the model by the previous call when it starts
        from a cache: cleared, the M-RoPE positions are recomputed from the new prompt.
        """
        if hasattr(self.model, "model") and hasattr(self.model.model, "rope_deltas"):
            self.model.model.rope_deltas = None

    def generate(self, plan: GenerationPlan, job: Job) -> None:
        """Stream ``Delta`` events then one ``Finish`` into ``job.channel`` (one ``generate``)."""
        timings = {"queue": job.queue_seconds}
        prompt = plan.prompt
        kwargs = self.model_inputs(plan, timings)
        assembler = TextAssembler(self.decode, plan.sampling.stop)
        tally = _Tally()

        def on_token(token: int) -> bool:
            if assembler.stopped or tally.eos or job.cancel.is_set():
                return True
            tally.last = time.perf_counter()
            tally.first = tally.first or tally.last
            tally.tokens += 1
            if token in self.eos_token_ids:
                tally.eos = True
                return True
            text = assembler.add(token)
            if text and not job.channel.put(Delta(text)):
                job.cancel.set()
            return assembler.stopped or job.cancel.is_set()

        if job.cancel.is_set():
            raise GenerationCancelled("cancelled before generation")
        started = time.perf_counter()
        kv = plan.prefix.start(self.model.config) if plan.prefix is not None else None
        if kv is not None:
            kwargs["cache"] = kv
        self.reset_rope()
        with self._seeded(plan.sampling.seed):
            sequences = self.model.generate(
                **kwargs,
                generation_config=generation_config(
                    plan.sampling, self.eos_list, self.pad_token_id
                ),
                stopping_criteria=StoppingCriteriaList([_Progress(on_token)]),
                logits_processor=LogitsProcessorList(plan.logits_processors),
            )
        if job.cancel.is_set() and not (assembler.stopped or tally.eos):
            job.channel.put(Failure(GenerationCancelled("cancelled")))
            return
        if plan.prefix is not None and kv is not None:
            # Stored before Finish goes out, so the client's next turn can find it.
            plan.prefix.finish(sequences[0], kv)
        tail = assembler.finish()
        if tail:
            job.channel.put(Delta(tail))
        timings["prefill"] = tally.first - started if tally.first else 0.0
        timings["decode"] = tally.last - tally.first
        usage = Usage(
            prompt_tokens=prompt.prompt_tokens,
            completion_tokens=tally.tokens,
            cached_tokens=plan.cached_tokens,
            image_tokens=sum(prompt.image_tokens),
        )
        reason: FinishReason = "stop" if assembler.stopped or tally.eos else "length"
        job.channel.put(Finish(reason, usage, timings))

    def decode(self, ids: list[int]) -> str:
        """Token ids to text, special tokens left out."""
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed torch's RNG for this job only; the global RNG state is restored afterwards."""
        if seed is None:
            yield
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
