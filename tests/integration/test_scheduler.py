"""The local engine's scheduler on the tiny random Qwen3-VL: chunked prefill, image encoding spread
over steps between decode tokens, the key/value memory budget, and cancellation during prefill.

Ground truth is plain ``model.generate`` (``tests.reference``); a small ``step_tokens`` makes every
prompt (and every image's 80 tokens) prefill in several chunks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from adapters.base import Delta, GenerationCancelled, PromptTooLong, collect
from adapters.local import ALL_CACHES, CACHES_OFF, LocalVLMAdapter
from adapters.local.jobs import NoObserver
from tests.integration.batching_support import (
    Client,
    batch_of,
    make_adapter,
    request,
    staggered,
    until,
)
from tests.reference import Reference, assert_matches

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_TOKENS = 12


class Steps(NoObserver):
    """Records what every step did (the engine's real observer calls, on the worker thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spent: list[dict[str, int]] = []
        self.memory_waits = 0
        self.gaps = 0

    def step(self, spent: dict[str, int], seconds: float) -> None:
        with self.lock:
            self.spent.append(dict(spent))

    def memory_wait(self) -> None:
        self.memory_waits += 1

    def token_gap(self, seconds: float) -> None:
        self.gaps += 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def steps() -> Steps:
    return Steps()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chunked(tiny_model_dir: Path, steps: Steps) -> AsyncIterator[LocalVLMAdapter]:
    adapter = await make_adapter(tiny_model_dir, 4, steps, step_tokens=STEP_TOKENS)
    yield adapter
    await adapter.aclose()


async def test_chunked_prefill_gives_model_generate_tokens_in_a_mixed_batch(
    chunked: LocalVLMAdapter, reference: Reference, steps: Steps
) -> None:
    waves = [
        [request("hi", 60), request("picture", 20)],
        [request("two", 15), request("why", 10)],
        [request("wide", 12), request("weather", 30)],
    ]
    flat = [r for wave in waves for r in wave]
    expected = [reference.expect(r) for r in flat]
    got = await staggered(chunked, waves, caches=ALL_CACHES)
    for g, e in zip(got, expected, strict=True):
        assert_matches(g, e)
    prompt = chunked._builder.build(flat[2].messages).prompt_tokens
    assert prompt > 3 * STEP_TOKENS, "the two-image prompt was prefilled in several chunks"
    assert max(s.get("prefill", 0) for s in steps.spent) <= STEP_TOKENS


async def test_image_encoding_and_prefill_run_between_decode_tokens(
    chunked: LocalVLMAdapter, steps: Steps
) -> None:
    chunked.clear_caches()
    runner = Client(chunked, request("hi", 200), CACHES_OFF)
    await runner.started.wait()
    with steps.lock:
        steps.spent.clear()
    newcomer = await collect(chunked.stream(request("two", 3), caches=CACHES_OFF))
    with steps.lock:
        spent = list(steps.spent)
    assert not runner.task.done(), "the stream ran all along"
    while spent and "decode" not in spent[0]:
        spent.pop(0)  # the runner's own prefill step, which sent its first text before it ended
    await runner.task
    encoding = [s for s in spent if "encode" in s]
    prefilling = [s for s in spent if "prefill" in s]
    assert len(encoding) > 1, "the encoder ran over several steps"
    assert len(prefilling) > 1, "the prefill ran over several steps"
    # The running stream got its token in every one of those steps.
    assert all(s.get("decode", 0) >= 1 for s in encoding + prefilling)
    assert newcomer.usage.completion_tokens == 3
    assert steps.gaps > 0


async def test_a_newcomer_joins_in_place_of_a_finished_row_with_model_generate_tokens(
    chunked: LocalVLMAdapter, reference: Reference
) -> None:
    kv = batch_of(chunked)._kv
    picture, hi, why = request("picture", 60), request("hi", 24), request("why", 5)
    expected = [reference.expect(r) for r in (picture, hi, why)]
    long, short = Client(chunked, picture, CACHES_OFF), Client(chunked, hi, CACHES_OFF)
    got_short = await short.task
    assert not long.task.done(), "the picture row still decodes"
    joined, rebuilds = kv.joined_in_place, kv.rebuilds
    got_late = await collect(chunked.stream(why, caches=CACHES_OFF))
    got_long = await long.task
    assert kv.joined_in_place == joined + 1, "the newcomer took the finished row's place"
    assert kv.rebuilds == rebuilds
    for g, e in zip((got_long, got_short, got_late), expected, strict=True):
        assert_matches(g, e)


async def test_a_request_cancelled_during_prefill_frees_its_place_at_once(
    chunked: LocalVLMAdapter, steps: Steps
) -> None:
    batch = batch_of(chunked)
    stream = chunked.stream(request("two", 50), caches=CACHES_OFF)
    task = asyncio.create_task(collect(stream))
    assert await until(lambda: bool(batch._prefilling) and batch._prefilling[0].done > 0, 30)
    remaining = batch._prefilling[0].remaining
    assert remaining > STEP_TOKENS  # still several chunks to go
    task.cancel()
    with pytest.raises((asyncio.CancelledError, GenerationCancelled)):
        await task
    assert await until(lambda: len(batch) == 0, 10)
    assert batch.kv_bytes == 0
    assert await asyncio.to_thread(chunked.worker.wait_idle, 5.0)


async def test_the_memory_budget_is_never_exceeded(tiny_model_dir: Path) -> None:
    steps = Steps()
    names = ("hi", "why", "count", "weather")
    probe = await make_adapter(tiny_model_dir, 4)
    token_bytes = batch_of(probe).token_bytes
    longest = max(probe._builder.build(request(n, 1).messages).prompt_tokens for n in names)
    await probe.aclose()
    # Room for two of the requests below at once (prompt + 60 tokens each), not four.
    budget = 2 * (longest + 60 + 1) * token_bytes
    adapter = await make_adapter(tiny_model_dir, 4, steps, kv_bytes=budget)
    try:
        batch = batch_of(adapter)
        results = await asyncio.gather(
            *(collect(adapter.stream(request(n, 60), caches=CACHES_OFF)) for n in names)
        )
        assert all(r.usage.completion_tokens > 0 for r in results)
        assert 0 < batch.peak_bytes <= budget
        assert steps.memory_waits >= 1, "some request waited for memory"
        # One that could never fit alone is refused up front (400 context_length_exceeded).
        with pytest.raises(PromptTooLong):
            await collect(adapter.stream(request("hi", budget // token_bytes), caches=CACHES_OFF))
        assert await asyncio.to_thread(adapter.worker.wait_idle, 5.0)
        assert batch.kv_bytes == 0
    finally:
        await adapter.aclose()


async def test_requests_wait_while_the_machine_has_too_little_memory_free(
    tiny_model_dir: Path,
) -> None:
    """The default budget follows the memory free now: with another process holding most of it
    (simulated: free memory = what the batch would leave of room for one request), requests
    run one after another instead of together, and all finish."""
    steps = Steps()
    adapter = await make_adapter(tiny_model_dir, 4, steps)  # kv_bytes = 0: from free memory
    try:
        batch = batch_of(adapter)
        assert batch.free_memory is not None, "the default budget watches free memory"
        names = ("hi", "why", "count")
        longest = max(adapter._builder.build(request(n, 1).messages).prompt_tokens for n in names)
        one = (longest + 30) * batch.token_bytes
        batch.free_memory = lambda: 2 * one + batch.token_bytes - batch.kv_bytes
        results = await asyncio.gather(
            *(collect(adapter.stream(request(n, 30), caches=CACHES_OFF)) for n in names)
        )
        assert all(r.usage.completion_tokens > 0 for r in results)
        assert steps.memory_waits >= 1
        assert batch.largest == 1
    finally:
        await adapter.aclose()


async def test_text_streams_from_the_first_step(chunked: LocalVLMAdapter) -> None:
    got = [e async for e in chunked.stream(request("count", 5), caches=CACHES_OFF)]
    assert any(isinstance(e, Delta) for e in got)
