"""One request inside the running batch: its prefill, its sampling, its text and its report.

``Prefill`` runs a request's prompt through the model in chunks of the step's budget (so a long
prompt or a large image never stalls the running streams for long), keeps the key/value cache and
samples the first token itself. Every later token comes from a batched decode step
(``decode_step``, one forward pass over the running rows, run by ``adapters.local.batching``).

Sampling follows the request, as ``adapters.local.generation`` does: ``response_format`` processors,
then temperature, then nucleus ``top_p`` (the transformers warpers, in ``generate``'s order), then a
draw from the sequence's own ``torch.Generator`` (seeded with the request's ``seed``), so a seeded
request gives the same tokens alone or batched and never touches the global RNG. Temperature 0 is
greedy (the arg max after the processors).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
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
from adapters.local.jobs import Failure, Job
from adapters.local.kvbatch import BatchedKV
from adapters.local.vision import encoder_outputs_of

__all__ = ("Prefill", "Sampler", "SequenceRun", "decode_step")


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
        self.gap: float | None = None
        """Seconds between the last two tokens (None after the first)."""

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
        previous, self._last = self._last, time.perf_counter()
        self.gap = self._last - previous if previous else None
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


class Prefill:
    """A request's prompt run through the model in chunks (on the worker thread).

    Chunked prefill: ``run(n)`` feeds the next ``n`` prompt tokens with the key/value cache of
    the ones before (a cached prefix's to start with), their M-RoPE positions (computed once for
    the whole prompt, as ``generate`` does) and the vision features of the image tokens among
    them (an image may be split between chunks: features are sliced by token). The last chunk
    gives the next-token logits; ``start`` then samples the first token.
    """

    def __init__(self, runner: ModelRunner, inputs: GenerationInputs, job: Job) -> None:
        self.runner = runner
        self.inputs = inputs
        self.job = job
        self.timings = {"queue": job.queue_seconds}
        prompt = inputs.prompt
        device = runner.device
        self.ids = prompt.input_ids.to(device)
        features = runner.features(inputs, self.timings)
        model = runner.model
        self.kv = inputs.prefix.start(model.config) if inputs.prefix is not None else DynamicCache()
        self.done = self.kv.get_seq_length()
        """Prompt tokens whose keys and values are in ``kv``."""
        grid = prompt.image_grid_thw.to(device) if prompt.image_grid_thw is not None else None
        rope, deltas = model.model.get_rope_index(
            self.ids, prompt.mm_token_type_ids.to(device), image_grid_thw=grid
        )
        text = torch.arange(self.total, device=device)[None, None, :]
        self.positions = torch.cat((text, rope))
        """``(4, 1, prompt tokens)``: text position, then the three M-RoPE axes."""
        self.rope_delta = int(deltas.flatten()[0])
        image = (self.ids[0] == model.config.image_token_id).long()
        image[: self.done] = 0  # images inside the reused prefix have no features here
        self._rows = torch.cat((image.new_zeros(1), image.cumsum(0)))
        """``_rows[k]``: feature rows of the image tokens before position ``k``."""
        self._embeds = torch.cat([f.embeds for f in features]) if features else None
        layers = len(features[0].deepstack) if features else 0
        self._deepstack = [torch.cat([f.deepstack[j] for f in features]) for j in range(layers)]
        self.started = time.perf_counter()

    @property
    def total(self) -> int:
        return int(self.ids.shape[1])

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def run(self, tokens: int) -> torch.Tensor | None:
        """Feed up to ``tokens`` more prompt tokens; the ``(vocab,)`` float32 next-token logits
        after the last one, else None."""
        start, end = self.done, min(self.total, self.done + tokens)
        rows = slice(int(self._rows[start]), int(self._rows[end]))
        vision = None
        if self._embeds is not None and rows.stop > rows.start:
            vision = {
                "image": encoder_outputs_of(self._embeds[rows], [d[rows] for d in self._deepstack])
            }
        out = self.runner.model(
            input_ids=self.ids[:, start:end],
            position_ids=self.positions[:, :, start:end],
            cache=self.kv,
            use_cache=True,
            logits_to_keep=1,
            mm_encoder_outputs=vision,
        )
        self.done = end
        if end < self.total:
            return None
        # As generate does: float32 logits of the last position, a copy the processors may edit.
        return out.logits[0, -1, :].to(copy=True, dtype=torch.float32)

    def start(self, logits: torch.Tensor) -> tuple[SequenceRun, DynamicCache] | None:
        """Choose the first token from the prompt's ``logits``: the running sequence and its
        key/value cache, or None when it already finished (its ``Finish`` sent)."""
        run = SequenceRun(
            self.runner,
            self.inputs,
            self.job,
            started=self.started,
            rope_delta=self.rope_delta,
            timings=self.timings,
        )
        if not run.advance(logits):
            return run, self.kv
        run.finish(self.kv if run.keeps_cache else None)
        return None


def decode_step(
    model: Any, kv: BatchedKV, tokens: Sequence[int], rope_deltas: Sequence[int]
) -> torch.Tensor:
    """Feed ``tokens[i]`` to row ``i`` of ``kv``; ``(rows, vocab)`` float32 next-token logits.

    ``rope_deltas[i]``: row ``i``'s M-RoPE position minus its text position (from its prefill).
    ``kv`` grows by one position per row. Explicit ``position_ids`` ``(4, rows, 1)``: the text
    position is the row's own length, the three M-RoPE positions that plus its ``rope_delta``,
    so no row sees another's positions or the ``rope_deltas`` the model keeps.
    """
    device = model.device
    ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=device)
    text = torch.tensor(kv.lengths, dtype=torch.long, device=device)
    rope = text + torch.tensor(list(rope_deltas), dtype=torch.long, device=device)
    positions = torch.stack((text, rope, rope, rope))[:, :, None]
    out = model(
        input_ids=ids,
        attention_mask=kv.attention_mask(),
        position_ids=positions,
        cache=kv.cache,
        use_cache=True,
        logits_to_keep=1,
    )
    kv.advanced()
    # As generate does: float32 logits of the last position, a copy the processors may edit.
    return out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
