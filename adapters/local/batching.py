"""Continuous (iteration-level) batching: requests join and leave a running batch between steps.

``DecodeBatch`` is the ``Stepper`` of the model's worker (``adapters.local.worker``). A generation
job's ``run`` is ``DecodeBatch.admit``: it prefills the request alone
(``adapters.local.sequence.prefill``: embedding cache, prefix cache and precomputed vision features)
and chooses its first token; a sequence that continues waits to join. Each ``step``:

1. drops cancelled sequences (their consumer is gone: they free their slot within one step);
2. if any sequence joined or left, rebuilds the left-padded key/value batch once
   (``adapters.local.kvbatch``);
3. runs ONE forward pass for every sequence: input ``(batch, 1)`` = each one's last token,
   ``attention_mask`` zero over each row's padding, and explicit ``position_ids``
   ``(4, batch, 1)``: the text position is the row's own length, the three M-RoPE positions that
   plus the row's ``rope_delta`` from its prefill (after the prompt, generated text advances all
   three axes alike), so no row sees another's positions or the ``rope_deltas`` the model keeps;
4. samples each row with its own parameters, processors and generator, streams its text, and
   finishes the rows that hit end-of-turn, a stop string, ``max_tokens`` or cancellation
   (storing their key/value cache, without padding, in the prefix cache).

A failure while sampling one row (a ``response_format`` processor) fails that request only; a
failing forward pass fails every request in the batch. Greedy output is token-identical to
``model.generate`` on the request alone (tested on the tiny model; padded positions are masked
out exactly, so rows differ from a lone run only by floating-point summation order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from adapters.base import AdapterError
from adapters.local.generation import GenerationInputs, ModelRunner
from adapters.local.kvbatch import BatchedKV
from adapters.local.sequence import SequenceRun, prefill
from adapters.local.worker import Job

__all__ = ("DecodeBatch", "decode_step")

logger = logging.getLogger(__name__)


class DecodeBatch:
    """The sequences decoding together on one model; every method runs on the worker thread."""

    def __init__(self, runner: ModelRunner, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.runner = runner
        self.capacity = capacity
        self._rows: list[SequenceRun] = []
        """Sequences in key/value row order (finished ones leave at the next step)."""
        self._finished: set[int] = set()
        """Rows that ended at the last step (``_rows`` indices)."""
        self._joining: list[tuple[SequenceRun, DynamicCache]] = []
        self._kv = BatchedKV()
        self.steps = 0
        """Decode steps run (forward passes over the batch)."""
        self.largest = 0
        """Most sequences that shared one decode step."""

    def __len__(self) -> int:
        return len(self._rows) - len(self._finished) + len(self._joining)

    def __contains__(self, job: object) -> bool:
        live = (run for i, run in enumerate(self._rows) if i not in self._finished)
        return any(run.job is job for run in (*live, *(run for run, _ in self._joining)))

    def admit(self, inputs: GenerationInputs, job: Job) -> None:
        """A job's ``run``: prefill, choose the first token, then join at the next step."""
        started = prefill(self.runner, inputs, job)
        if started is not None:
            self._joining.append(started)

    def step(self) -> list[Job]:
        """One decode step for every sequence; the jobs that ended."""
        ended = self._regroup()
        if not self._rows:
            return ended
        try:
            logits = self._forward()
        except Exception as exc:
            logger.exception("batched decode step failed")
            return ended + self.abort(exc)
        for row, run in enumerate(self._rows):
            try:
                if not run.advance(logits[row]):
                    continue
                run.finish(self._kv.row(row) if run.keeps_cache else None)
            except Exception as exc:  # this request's processors: the others go on
                if not isinstance(exc, AdapterError):
                    logger.exception("sampling failed")
                run.fail(exc)
            self._finished.add(row)
            ended.append(run.job)
        if len(self._finished) == len(self._rows) and not self._joining:
            self._rows, self._finished = [], set()
            self._kv.clear()
        return ended

    def abort(self, error: BaseException) -> list[Job]:
        """End every sequence with ``error`` and free the batch."""
        live = [run for i, run in enumerate(self._rows) if i not in self._finished]
        runs = live + [run for run, _ in self._joining]
        for run in runs:
            run.fail(error)
        self._rows, self._finished, self._joining = [], set(), []
        self._kv.clear()
        return [run.job for run in runs]

    def _regroup(self) -> list[Job]:
        """Drop finished and cancelled rows, add the joining ones; the cancelled jobs."""
        ended: list[Job] = []
        keep: list[int] = []
        for i, run in enumerate(self._rows):
            if i in self._finished:
                continue
            if run.cancelled:
                run.finish(None)
                ended.append(run.job)
            else:
                keep.append(i)
        joining: list[tuple[SequenceRun, DynamicCache]] = []
        for run, kv in self._joining:
            if run.cancelled:
                run.finish(None)
                ended.append(run.job)
            else:
                joining.append((run, kv))
        if len(keep) == len(self._rows) and not self._joining:
            return ended
        rows = [self._rows[i] for i in keep] + [run for run, _ in joining]
        headroom = max((run.remaining for run in rows), default=0)
        self._kv.rebuild(keep, [kv for _, kv in joining], headroom)
        self._rows, self._finished, self._joining = rows, set(), []
        return ended

    def _forward(self) -> torch.Tensor:
        logits = decode_step(
            self.runner.model,
            self._kv,
            [run.last for run in self._rows],
            [run.rope_delta for run in self._rows],
        )
        self.steps += 1
        self.largest = max(self.largest, len(self._rows))
        return logits


def decode_step(
    model: Any, kv: BatchedKV, tokens: Sequence[int], rope_deltas: Sequence[int]
) -> torch.Tensor:
    """Feed ``tokens[i]`` to row ``i`` of ``kv``; ``(rows, vocab)`` float32 next-token logits.

    ``rope_deltas[i]``: row ``i``'s M-RoPE position minus its text position (from its prefill).
    ``kv`` grows by one position per row.
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
