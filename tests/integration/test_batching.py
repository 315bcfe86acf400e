"""Continuous batching in LocalVLMAdapter, on the tiny random Qwen3-VL.

Ground truth is plain ``model.generate`` on the same checkpoint (``tests.reference``): greedy
requests must give its tokens whether they run alone or in a batch. Requests start at staggered
times so that later ones join a batch that is already decoding. Batches smaller than the
default (slot limits, a batch of one): ``test_batching_slots.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from transformers import DynamicCache, LogitsProcessor

from adapters.base import Delta, GenerationRequest, Message, ResponseFormat, SamplingParams, collect
from adapters.local import ALL_CACHES, CACHES_OFF, LocalVLMAdapter
from adapters.local.kvbatch import BatchedKV
from adapters.local.sequence import decode_step
from tests.integration.batching_support import (
    PROMPTS,
    Client,
    batch_of,
    make_adapter,
    request,
    same,
    staggered,
    until,
)
from tests.reference import Reference, assert_matches

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def batched(tiny_model_dir: Path) -> AsyncIterator[LocalVLMAdapter]:
    adapter = await make_adapter(tiny_model_dir, 8)
    yield adapter
    await adapter.aclose()


async def test_greedy_batched_equals_model_generate_with_staggered_arrivals(
    batched: LocalVLMAdapter, reference: Reference
) -> None:
    hi = reference.expect(request("hi", 200))
    wide = reference.expect(request("wide", 45))
    waves = [
        # The anchor: 200 tokens, running while every later wave joins.
        [request("hi", 200), request("picture", 40)],
        [request("weather", 70), request("two", 30), request("why", 20)],
        [
            request("wide", 45, stop=(wide.text[6:9],)),
            request("count", 25),
            request("hi", 120, stop=(hi.text[30:33], "never")),
        ],
    ]
    flat = [r for wave in waves for r in wave]
    expected = [reference.expect(r) for r in flat]
    batch = batch_of(batched)
    batch.largest = 0
    got = await staggered(batched, waves)
    for g, e in zip(got, expected, strict=True):
        assert_matches(g, e)
    reasons = {e.finish_reason for e in expected}
    assert reasons == {"stop", "length"}, "the cases cover end-of-turn, stop strings and length"
    assert expected[5].text == wide.text[: wide.text.index(wide.text[6:9])]
    assert batch.largest >= 5
    assert await asyncio.to_thread(batched.worker.wait_idle, 5.0)
    assert batched.worker.pending == 0
    assert len(batch) == 0


async def test_batched_rows_give_the_logits_of_single_rows(batched: LocalVLMAdapter) -> None:
    runner = batched._loaded()
    prompts = [batched._builder.build(PROMPTS[n]) for n in ("why", "picture", "two")]

    def compute() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model = runner.model
        caches: list[DynamicCache] = []
        deltas: list[int] = []
        firsts: list[int] = []
        for prompt in prompts:
            kv = DynamicCache()
            model.model.rope_deltas = None  # generate trusts a stale one otherwise
            out = model.generate(
                **prompt.model_inputs(), cache=kv, max_new_tokens=1, do_sample=False
            )
            caches.append(kv)
            deltas.append(int(model.model.rope_deltas[0, 0]))
            firsts.append(int(out[0, -1]))
        together = BatchedKV()
        together.rebuild([], caches, headroom=4)
        alone = []
        for kv in caches:
            one = BatchedKV()
            one.rebuild([], [kv])
            alone.append(one)
        batched_logits, single_logits = [], []
        tokens = firsts
        for _ in range(4):
            logits = decode_step(model, together, tokens, deltas)
            singles = [
                decode_step(model, one, [t], [d])[0]
                for one, t, d in zip(alone, tokens, deltas, strict=True)
            ]
            batched_logits.append(logits)
            single_logits.append(torch.stack(singles))
            tokens = [int(t) for t in logits.argmax(-1)]
        return batched_logits, single_logits

    together, alone = await batched.worker.call(compute)
    assert len({p.prompt_tokens for p in prompts}) == 3  # three rows, three paddings
    for b, s in zip(together, alone, strict=True):
        torch.testing.assert_close(b, s, rtol=1e-4, atol=1e-4)
        assert torch.equal(b.argmax(-1), s.argmax(-1))


JSON_SCHEMA = ResponseFormat(
    "json_schema",
    schema={
        "type": "object",
        "properties": {"label": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["label", "count"],
    },
    strict=True,
)


async def test_mixed_sampling_params_in_one_batch(
    batched: LocalVLMAdapter, reference: Reference
) -> None:
    pytest.importorskip("adapters.local.constraints")
    requests = [
        request("hi", 150),  # greedy anchor
        request("picture", 40, temperature=0.9, top_p=0.8, seed=11),
        request("count", 40, temperature=1.3, seed=5),
        request("two", 64, response_format=JSON_SCHEMA),
        request("wide", 30, temperature=0.7, top_p=0.95, seed=11),
        request("weather", 30),
    ]
    alone = [await collect(batched.stream(r, caches=CACHES_OFF)) for r in requests]
    state = torch.random.get_rng_state()
    batch = batch_of(batched)
    batch.largest = 0
    together = await staggered(batched, [requests[:1], requests[1:]])
    assert batch.largest >= 5
    for got, expected in zip(together, alone, strict=True):
        same(got, expected)
    assert torch.equal(torch.random.get_rng_state(), state)
    # Greedy rows equal model.generate; sampled rows really sampled; the JSON row parses.
    for i in (0, 5):
        assert_matches(together[i], reference.expect(requests[i]))
    greedy = reference.expect(request("picture", 40))
    assert together[1].text != greedy.text
    value = json.loads(together[3].text)
    assert set(value) == {"label", "count"}
    assert isinstance(value["count"], int)


async def test_seeded_sampling_is_the_same_alone_and_in_a_batch(batched: LocalVLMAdapter) -> None:
    seeded = request("picture", 32, temperature=1.0, top_p=0.9, seed=1234)
    alone = await collect(batched.stream(seeded))
    others = [request("hi", 100), request("count", 60, temperature=1.0), request("two", 50)]
    results = await staggered(batched, [others, [seeded]])
    same(results[-1], alone)
    other_seed = request("picture", 32, temperature=1.0, top_p=0.9, seed=4321)
    assert (await collect(batched.stream(other_seed))).text != alone.text


class Probe(LogitsProcessor):
    """Bans end-of-turn tokens (so only cancellation ends the run) and counts decode steps."""

    def __init__(self, ban: Sequence[int]) -> None:
        self.ban, self.calls = list(ban), 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        scores[:, self.ban] = -float("inf")
        return scores


async def test_cancelling_one_sequence_leaves_the_others_intact(
    batched: LocalVLMAdapter, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Probe(sorted(batched._loaded().eos_token_ids))
    module = types.ModuleType("adapters.local.constraints")
    module.logits_processor_for = lambda *args, **kwargs: probe  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adapters.local.constraints", module)
    keep = [request("hi", 200), request("picture", 150)]
    expected = [reference.expect(r) for r in keep]
    batch = batch_of(batched)
    clients = [Client(batched, r, CACHES_OFF) for r in keep]
    await clients[0].started.wait()
    doomed = batched.stream(request("why", 20000, response_format=ResponseFormat("json_object")))
    assert isinstance(await anext(doomed), Delta)
    assert batched.worker.pending == 3
    await doomed.aclose()
    at_cancel = probe.calls
    # Its slot is freed at once; the other two still run.
    assert await until(lambda: batched.worker.pending == 2, seconds=1.0)
    assert not any(c.task.done() for c in clients)
    results = await asyncio.gather(*(c.task for c in clients))
    assert probe.calls - at_cancel <= 2
    for got, want in zip(results, expected, strict=True):
        assert_matches(got, want)
    assert await asyncio.to_thread(batched.worker.wait_idle, 5.0)
    assert len(batch) == 0


async def test_caches_stay_token_identical_when_batched(
    batched: LocalVLMAdapter, reference: Reference
) -> None:
    batched.clear_caches()
    names = ["picture", "two", "wide", "weather"]  # prompts of 17+ tokens: prefixes are kept
    first = [request(n, 24) for n in names]
    expected = [reference.expect(r) for r in first]
    # Round 1 fills both caches from padded batch rows; round 2 starts from those prefixes.
    for round_ in range(2):
        got = await staggered(batched, [first[:1], first[1:]], ALL_CACHES)
        for g, e in zip(got, expected, strict=True):
            assert_matches(g, e)
        if round_:
            assert [g.usage.cached_tokens for g in got] == [g.usage.prompt_tokens - 1 for g in got]
    # Next turns: the prefix is the previous turn, the new tokens are prefilled and batched.
    follow = []
    for name, done in zip(names, expected, strict=True):
        turn = (*PROMPTS[name], Message("assistant", (done.text,)), Message("user", ("More?",)))
        follow.append(GenerationRequest(turn, SamplingParams(20, temperature=0.0)))
    want = [reference.expect(r) for r in follow]
    got = await staggered(batched, [follow[:2], follow[2:]], ALL_CACHES)
    for g, e in zip(got, want, strict=True):
        assert_matches(g, e)
        assert g.usage.cached_tokens > e.image_tokens
    assert batched.cache_stats()["embedding"].entries == 4  # each image encoded once
