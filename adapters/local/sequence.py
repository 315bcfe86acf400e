"""One request inside the running batch: its prefill, its sampling, its text and its report.

``prefill`` runs a request's prompt through ``generate`` for exactly one new token (so images,
cached vision features, a cached prefix and the M-RoPE positions take transformers' own path), keeps
the raw next-token logits and the key/value cache, and samples the first token itself. Every later
token comes from a batched decode step (``adapters.local.batching``).

Sampling follows the request, as ``adapters.local.generation`` does: ``response_format`` processors,
then temperature, then nucleus ``top_p`` (the transformers warpers, in ``generate``'s order), then a
draw from the sequence's own ``torch.Generator`` (seeded with the request's ``seed``), so a seeded
request gives the same tokens alone or batched and never touches the global RNG. Temperature 0 is
greedy (the arg max after the processors).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from adapters.base import (
    Delta,
    Finish,
    FinishReason,
    GenerationCancelled,
    SamplingParams,
    Usage,
)
from adapters.local.generation import GenerationInputs, ModelRunner, TextAssembler
from adapters.local.worker import Failure, Job

__all__ = ("Sampler", "SequenceRun", "prefill")


class Sampler:
    """Chooses one sequence's next token from its logits (one row)."""

    def __init__(
        self, sampling: SamplingParams, processors: tuple[Any, ...], device: torch.device
    ) -> None:
        self.processors = processors
        self.greedy = sampling.greedy
        self._warpers: list[LogitsProcessor] = []
        self.generator: torch.Generator | None = None
        if not self.greedy:
            if sampling.temperature != 1.0:
                self._warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_p < 1.0:
                self._warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
            self.generator = torch.Generator(device=device)
            if sampling.seed is None:
                self.generator.seed()  # fresh entropy, not the global RNG
            else:
                self.generator.manual_seed(sampling.seed)

    def choose(self, ids: list[int], logits: torch.Tensor) -> int:
        """The next token after ``ids`` (prompt and completion so far), from ``(vocab,)`` float32
        ``logits``, which may be modified in place."""
        scores = logits[None, :]
        if self.processors:
            input_ids = torch.tensor([ids], dtype=torch.long, device=logits.device)
            for processor in self.processors:
                scores = processor(input_ids, scores)
        if self.greedy:
            return int(scores.argmax(-1))
        for warper in self._warpers:
            scores = warper(None, scores)  # warpers ignore input_ids
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class SequenceRun:
    """One request's decoding state: tokens so far, streaming text, counters, the final report."""

    def __init__(
        self,
        runner: ModelRunner,
        inputs: GenerationInputs,
        job: Job,
        *,
        started: float,
        rope_delta: int,
        timings: dict[str, float],
    ) -> None:
        self.inputs = inputs
        self.job = job
        self.sampler = Sampler(inputs.sampling, inputs.logits_processors, runner.device)
        self.ids: list[int] = [int(t) for t in inputs.prompt.input_ids[0]]
        """Prompt and completion token ids so far."""
        self.rope_delta = rope_delta
        """M-RoPE position minus text position for every generated token."""
        self._eos = runner.eos_token_ids
        self._assembler = TextAssembler(runner.decode, inputs.sampling.stop)
        self._started = started
        self._timings = timings
        self.tokens = 0
        """Tokens generated, the end-of-turn token included."""
        self._eos_seen = False
        self._first = 0.0
        self._last = 0.0

    @property
    def last(self) -> int:
        """The token to feed at the next decode step."""
        return self.ids[-1]

    @property
    def cancelled(self) -> bool:
        return self.job.cancel.is_set()

    @property
    def remaining(self) -> int:
        """Tokens this sequence may still generate."""
        return self.inputs.sampling.max_tokens - self.tokens

    @property
    def keeps_cache(self) -> bool:
        """Whether the prefix cache wants this sequence's key/value cache when it finishes."""
        prefix = self.inputs.prefix
        return prefix is not None and prefix.store and prefix.cache.enabled

    def advance(self, logits: torch.Tensor) -> bool:
        """Sample the next token from ``(vocab,)`` logits and stream it; True when finished."""
        token = self.sampler.choose(self.ids, logits)
        self.ids.append(token)
        self._last = time.perf_counter()
        self._first = self._first or self._last
        self.tokens += 1
        if token in self._eos:
            self._eos_seen = True
            return True
        text = self._assembler.add(token)
        if text and not self.job.channel.put(Delta(text)):
            self.job.cancel.set()
        return self._assembler.stopped or self.cancelled or self.remaining <= 0

    def finish(self, kv: DynamicCache | None) -> None:
        """Send the held-back text and ``Finish`` (or the cancellation), keeping ``kv`` (this
        sequence's cache, without padding, when ``keeps_cache``) in the prefix cache first."""
        stopped = self._assembler.stopped or self._eos_seen
        if self.cancelled and not stopped:
            self.job.channel.put(Failure(GenerationCancelled("cancelled")))
            return
        prefix = self.inputs.prefix
        if prefix is not None and kv is not None:
            # Stored before Finish goes out, so the client's next turn can find it.
            prefix.finish(torch.tensor(self.ids), kv)
        tail = self._assembler.finish()
        if tail:
            self.job.channel.put(Delta(tail))
        timings = self._timings
        timings["prefill"] = self._first - self._started if self._first else 0.0
        timings["decode"] = self._last - self._first
        prompt = self.inputs.prompt
        usage = Usage(
            prompt_tokens=prompt.prompt_tokens,
            completion_tokens=self.tokens,
            cached_tokens=self.inputs.cached_tokens,
            image_tokens=sum(prompt.image_tokens),
        )
        reason: FinishReason = "stop" if stopped else "length"
        self.job.channel.put(Finish(reason, usage, timings))

    def fail(self, error: BaseException) -> None:
        self.job.channel.put(Failure(error))


class _Capture(LogitsProcessor):
    """Keeps the raw next-token logits ``generate`` computed (float32, before any processing)."""

    def __init__(self) -> None:
        self.scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.scores = scores.clone()
        return scores


def prefill(
    runner: ModelRunner, inputs: GenerationInputs, job: Job
) -> tuple[SequenceRun, DynamicCache] | None:
    """Run the prompt and choose the first token (on the worker thread).

    Returns the running sequence and its key/value cache (the prompt's positions), or None when
    the sequence already finished (its ``Finish`` or failure sent).
    """
    timings = {"queue": job.queue_seconds}
    kwargs = runner.model_inputs(inputs, timings)
    if job.cancel.is_set():
        raise GenerationCancelled("cancelled before generation")
    model = runner.model
    started = time.perf_counter()
    kv = inputs.prefix.start(model.config) if inputs.prefix is not None else DynamicCache()
    runner.reset_rope()
    capture = _Capture()
    # One greedy step: only the raw logits matter; the request's own sampling chooses the token.
    model.generate(
        **kwargs,
        cache=kv,
        generation_config=GenerationConfig(
            max_new_tokens=1,
            do_sample=False,
            eos_token_id=runner.eos_list,
            pad_token_id=runner.pad_token_id,
        ),
        logits_processor=LogitsProcessorList([capture]),
    )
    deltas = getattr(getattr(model, "model", None), "rope_deltas", None)
    rope_delta = int(deltas.flatten()[0]) if deltas is not None else 0
    run = SequenceRun(runner, inputs, job, started=started, rope_delta=rope_delta, timings=timings)
    assert capture.scores is not None
    if not run.advance(capture.scores[0]):
        return run, kv
    run.finish(kv if run.keeps_cache else None)
    return None
