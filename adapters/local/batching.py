"""Continuous (iteration-level) batching with chunked prefill and a key/value memory budget.

``DecodeBatch`` is the ``Stepper`` of the model's worker (``adapters.local.worker``). A generation
job's ``run`` is ``DecodeBatch.admit``: the request starts prefilling (``adapters.local.sequence``).
The worker admits a job only when the batch has a free place and key/value memory for it
(``admits``: its predicted positions, prompt + max_tokens, within ``kv_budget``). Each ``step``,
within the step's ``StepBudget``:

1. drops cancelled sequences, running or prefilling (they free their memory at once);
2. runs ONE forward pass for every running sequence (one decode token each, ``decode_step``:
   each row's own positions and padding mask);
3. samples each row with its own parameters, processors and generator, streams its text, and
   finishes the rows that hit end-of-turn, a stop string, ``max_tokens`` or cancellation;
4. spends what is left of the budget on prefill chunks, oldest request first;
5. drops the finished sequences and joins those whose prefill finished, in place where they fit
   (``adapters.local.kvbatch``: a leaver costs a copy of one row, a joiner the copy of its own
   cache into a freed row); otherwise, or when the batch became mostly padding, the left-padded
   key/value batch is rebuilt once, as wide as its rows need. (A rebuild briefly holds the old
   and the new buffers: the budget bounds the memory between steps, not that transient copy.)

A failure while sampling one row or prefilling one request fails that request only; a failing
decode pass fails every request in the batch. Greedy output is token-identical to
``model.generate`` on the request alone, chunked or not (tested on the tiny model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers import DynamicCache

from adapters.base import AdapterError, GenerationCancelled
from adapters.local.generation import GenerationInputs, ModelRunner
from adapters.local.jobs import EngineObserver, Failure, Job, NoObserver, StepBudget
from adapters.local.kvbatch import BatchedKV, cache_bytes
from adapters.local.memory import kv_bytes_per_token
from adapters.local.sequence import Prefill, SequenceRun, decode_step

__all__ = ("MIN_CHUNK", "DecodeBatch")

logger = logging.getLogger(__name__)

MIN_CHUNK = 32
"""Prompt tokens a prefill chunk gets at least (never more than a whole step's budget), however
little of the budget the decode tokens left."""


class DecodeBatch:
    """The sequences decoding together on one model; every method runs on the worker thread."""

    def __init__(
        self,
        runner: ModelRunner,
        capacity: int,
        *,
        kv_budget: int = 0,
        free_memory: Callable[[], int] | None = None,
        observer: EngineObserver | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.runner = runner
        self.capacity = capacity
        self.kv_budget = kv_budget
        """Key/value bytes the live sequences may hold at most; 0: no budget."""
        self.free_memory = free_memory
        """With a budget from the memory free at load time: the memory free now; growth must fit
        in half of it, so a process started later makes requests wait, not the machine swap."""
        self.token_bytes = kv_bytes_per_token(runner.model)
        self._observer = observer or NoObserver()
        self._rows: list[SequenceRun] = []
        """Sequences in key/value row order (finished ones leave at the next step)."""
        self._finished: set[int] = set()
        """Rows that ended at the last step (``_rows`` indices)."""
        self._joining: list[tuple[SequenceRun, DynamicCache]] = []
        self._prefilling: list[Prefill] = []
        self._kv = BatchedKV()
        self.steps = 0
        """Decode steps run (forward passes over the batch)."""
        self.largest = 0
        """Most sequences that shared one decode step."""
        self.peak_bytes = 0
        """Most key/value bytes held after a step."""

    def __len__(self) -> int:
        return len(self._live()) + len(self._joining) + len(self._prefilling)

    @property
    def streaming(self) -> bool:
        return bool(self._live() or self._joining)

    def __contains__(self, job: object) -> bool:
        jobs = (run.job for run in (*self._live(), *(run for run, _ in self._joining)))
        return any(j is job for j in (*jobs, *(p.job for p in self._prefilling)))

    def admits(self, job: Job) -> bool:
        """A free place, and key/value memory for ``job.positions`` besides the others'."""
        if len(self) >= self.capacity:
            return False
        predicted = self.predicted_bytes(*job.positions)
        free = self.free_memory() // 2 + self.kv_bytes if self.free_memory else predicted
        if not self.kv_budget or predicted <= min(self.kv_budget, free):
            return True
        if not job.waited:
            job.waited = True
            self._observer.memory_wait()
        return False

    @property
    def max_tokens(self) -> int:
        """Positions (prompt + completion) one request may have: what the budget holds alone."""
        return self.kv_budget // self.token_bytes if self.kv_budget else 1 << 62

    def predicted_bytes(self, prompt: int = 0, completion: int = 0) -> int:
        """The most key/value bytes the live sequences (and one more, of ``prompt`` positions
        and at most ``completion`` more) may hold: every row is as wide as the longest history
        plus the longest future (rows are left-padded to one width and grow together)."""
        runs = [*self._live(), *(run for run, _ in self._joining)]
        pasts = [len(run.ids) for run in runs] + [p.total for p in self._prefilling]
        futures = [run.remaining for run in runs]
        futures += [p.inputs.sampling.max_tokens for p in self._prefilling]
        if prompt:
            pasts.append(prompt)
            futures.append(completion)
        if not pasts:
            return 0
        after = len(pasts) * (max(pasts) + max(futures)) * self.token_bytes
        # The buffers held now (free rows included), the prefilling caches grown to their prompts.
        prefilling = sum(p.total for p in self._prefilling) + prompt
        before = self._kv.nbytes + prefilling * self.token_bytes
        return max(after, before)

    @property
    def kv_bytes(self) -> int:
        """Key/value bytes held now: the batch's buffers and the prefilling caches."""
        caches = [p.kv for p in self._prefilling] + [kv for _, kv in self._joining]
        return self._kv.nbytes + sum(cache_bytes(kv) for kv in caches)

    def admit(self, inputs: GenerationInputs, job: Job) -> None:
        """A job's ``run``: start prefilling (chunks run at the coming steps)."""
        self._prefilling.append(Prefill(self.runner, inputs, job))

    def step(self, budget: StepBudget) -> list[Job]:
        """One decode token for every running sequence, then prefill chunks, within ``budget``;
        the jobs that ended."""
        ended = self._regroup()
        if self._rows:
            budget.spend("decode", len(self._rows))
            ended += self._decode()
        ended += self._prefill(budget)
        # Now rather than at the next step: finished rows free their memory before the worker
        # admits more, and the batch holds exactly what ``predicted_bytes`` counts.
        ended += self._regroup()
        held = self.kv_bytes
        self.peak_bytes = max(self.peak_bytes, held)
        self._observer.memory(held, self.kv_budget)
        return ended

    def abort(self, error: BaseException) -> list[Job]:
        """End every sequence with ``error`` and free the batch."""
        runs = self._live() + [run for run, _ in self._joining]
        for run in runs:
            run.fail(error)
        for prefill in self._prefilling:
            prefill.job.channel.put(Failure(error))
        jobs = [run.job for run in runs] + [p.job for p in self._prefilling]
        self._rows, self._finished, self._joining, self._prefilling = [], set(), [], []
        self._kv.clear()
        return jobs

    def _live(self) -> list[SequenceRun]:
        return [run for i, run in enumerate(self._rows) if i not in self._finished]

    def _decode(self) -> list[Job]:
        try:
            logits = self._forward()
        except Exception as exc:
            logger.exception("batched decode step failed")
            return self.abort(exc)
        ended: list[Job] = []
        for row, run in enumerate(self._rows):
            try:
                finished = run.advance(logits[row])
                if run.gap is not None:
                    self._observer.token_gap(run.gap)
                if not finished:
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

    def _prefill(self, budget: StepBudget) -> list[Job]:
        """Prefill chunks, oldest request first, while the budget lasts."""
        ended: list[Job] = []
        while self._prefilling and not budget.exhausted:
            prefill = self._prefilling[0]
            least = min(prefill.remaining, MIN_CHUNK, budget.tokens)
            tokens = budget.take("prefill", prefill.remaining, least)
            try:
                logits = prefill.run(tokens)
                if logits is None:
                    continue
                started = prefill.start(logits)
            except Exception as exc:  # this request's (a processor, a bad input): others go on
                if not isinstance(exc, AdapterError):
                    logger.exception("prefill failed")
                prefill.job.channel.put(Failure(exc))
                started = None
            self._prefilling.pop(0)
            if started is None:
                ended.append(prefill.job)
            else:
                self._joining.append(started)
        return ended

    def _regroup(self) -> list[Job]:
        """Drop finished and cancelled sequences, add the joining ones; the cancelled jobs."""
        ended: list[Job] = []
        for prefill in [p for p in self._prefilling if p.job.cancel.is_set()]:
            self._prefilling.remove(prefill)
            prefill.job.channel.put(Failure(GenerationCancelled("cancelled during prefill")))
            ended.append(prefill.job)
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
        if keep and len(keep) < len(self._rows):  # in place: a copy of one row per leaver
            order = self._kv.drop(sorted(set(range(len(self._rows))) - set(keep)))
            self._rows = [self._rows[i] for i in order]
            keep = list(range(len(order)))
        self._finished, self._joining = set(), []
        runs, caches = [run for run, _ in joining], [kv for _, kv in joining]
        future = max((run.remaining for run in runs), default=0)
        if keep and (self._kv.join(caches, future) if joining else not self._kv.sparse):
            self._rows += runs
            return ended
        rows = [self._rows[i] for i in keep] + runs
        self._kv.rebuild(keep, caches, max((run.remaining for run in rows), default=0))
        self._rows = rows
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
