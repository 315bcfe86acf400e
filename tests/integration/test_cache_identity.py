"""Embedding and prefix caches on the tiny Qwen3-VL: greedy tokens identical to no caches.

Every case runs the same request twice on one adapter: once with ``CACHES_OFF`` (encode every
image, prefill every token) and once with the caches, and compares the generated token ids that
``model.generate`` returned, the finish reason and the usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from adapters.base import (
    Completion,
    GenerationRequest,
    ImageInput,
    Message,
    SamplingParams,
    collect,
)
from adapters.local import (
    ALL_CACHES,
    CACHES_OFF,
    CacheConfig,
    CachePolicy,
    LocalModelConfig,
    LocalVLMAdapter,
)
from adapters.local.sequence import Prefill, SequenceRun
from tests.support import make_image

pytestmark = pytest.mark.asyncio(loop_scope="module")


def image(width: int, height: int, seed: int) -> ImageInput:
    return ImageInput(
        make_image(width, height, seed=seed), digest=f"digest-{width}x{height}/{seed}"
    )


A, B, C = image(320, 256, 1), image(256, 256, 2), image(288, 320, 3)
OTHER = image(512, 128, 4)
UNRELATED = [Message("user", ("Unrelated:", OTHER, "wide and short"))]


class Observer:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def counted(self, cache: str, event: str, n: int) -> None:
        self.counts[cache, event] = self.counts.get((cache, event), 0) + n

    def usage(self, cache: str, *, bytes_used: int, entries: int, capacity_bytes: int) -> None:
        assert 0 <= bytes_used <= capacity_bytes


class Recorder:
    """Wraps the real prefill, sequence end and encoder to see what ran (no fakes)."""

    def __init__(self, adapter: LocalVLMAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
        runner = adapter._loaded()
        self.generations: list[list[int]] = []
        self.encoded: list[int] = []
        self.prefilled: list[int] = []
        start, finish, encode = Prefill.__init__, SequenceRun.finish, runner.encode_pieces

        def recording_start(prefill: Prefill, *args: Any) -> None:
            start(prefill, *args)
            self.prefilled.append(prefill.remaining)

        def recording_finish(run: SequenceRun, kv: Any) -> None:
            self.generations.append(run.ids[run.inputs.prompt.prompt_tokens :])
            finish(run, kv)

        def recording_encode(pixels: torch.Tensor, grid: torch.Tensor, worker: Any) -> Any:
            self.encoded.append(int(grid.shape[0]))
            return encode(pixels, grid, worker)

        monkeypatch.setattr(Prefill, "__init__", recording_start)
        monkeypatch.setattr(SequenceRun, "finish", recording_finish)
        monkeypatch.setattr(runner, "encode_pieces", recording_encode)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(tiny_model_dir: Path) -> AsyncIterator[LocalVLMAdapter]:
    local = LocalVLMAdapter(
        LocalModelConfig(model=str(tiny_model_dir), dtype="float32", warmup=False),
        cache_observer=Observer(),
    )
    await local.start()
    yield local
    await local.aclose()


@pytest.fixture
def recorder(adapter: LocalVLMAdapter, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    adapter.clear_caches()
    return Recorder(adapter, monkeypatch)


def request(messages: list[Message], max_tokens: int = 12) -> GenerationRequest:
    return GenerationRequest(tuple(messages), SamplingParams(max_tokens, temperature=0.0))


async def generate(
    adapter: LocalVLMAdapter,
    recorder: Recorder,
    messages: list[Message],
    caches: CachePolicy = ALL_CACHES,
) -> tuple[list[int], Completion]:
    done = await collect(adapter.stream(request(messages), caches=caches))
    return recorder.generations[-1], done


async def same_as_uncached(
    adapter: LocalVLMAdapter, recorder: Recorder, messages: list[Message]
) -> Completion:
    """Generate without and with caches; assert identical tokens; the cached ``Completion``.

    An unrelated image request runs in between: Qwen3-VL keeps M-RoPE state (``rope_deltas``)
    from its last call, and a prefix hit must not pick up another prompt's.
    """
    expected, plain = await generate(adapter, recorder, messages, CACHES_OFF)
    await generate(adapter, recorder, UNRELATED, CACHES_OFF)
    recorder.encoded.pop()
    got, cached = await generate(adapter, recorder, messages)
    assert got == expected
    assert (cached.text, cached.finish_reason) == (plain.text, plain.finish_reason)
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens
    assert cached.usage.completion_tokens == plain.usage.completion_tokens
    assert plain.usage.cached_tokens == 0
    return cached


async def test_one_image_miss_then_hit(adapter: LocalVLMAdapter, recorder: Recorder) -> None:
    messages = [Message("user", (A, "What is in the picture?"))]
    first = await same_as_uncached(adapter, recorder, messages)
    assert first.usage.cached_tokens == 0
    assert recorder.encoded == [1, 1]
    again = await same_as_uncached(adapter, recorder, messages)
    # The whole prompt but its last token comes from the prefix cache; nothing is encoded.
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1
    assert recorder.encoded == [1, 1, 1]
    assert recorder.prefilled[-1] == 1
    assert again.timings["vision_encode"] == 0.0


async def test_same_tokens_with_another_image_reuse_only_the_text_before_it(
    adapter: LocalVLMAdapter, recorder: Recorder
) -> None:
    lookalike = image(320, 256, 5)  # same size as A: the very same token ids
    text = "Tell me everything about this picture, please:"
    await generate(adapter, recorder, [Message("user", (text, A))])
    messages = [Message("user", (text, lookalike))]
    done = await same_as_uncached(adapter, recorder, messages)
    mask = adapter._builder.build(messages).mm_token_type_ids[0]
    assert done.usage.cached_tokens == int(mask.argmax()) >= 16  # up to the image, not into it
    assert recorder.encoded == [1, 1, 1]


async def test_cached_image_features_in_a_new_conversation(
    adapter: LocalVLMAdapter, recorder: Recorder
) -> None:
    await generate(adapter, recorder, [Message("user", ("Look:", A, "a photo"))])
    # Different text before the image: no usable prefix, but A's features are cached.
    done = await same_as_uncached(adapter, recorder, [Message("user", ("Describe", A))])
    # Features reused, but every prompt token was prefilled again: nothing counts as cached.
    assert (done.usage.cached_tokens, done.usage.image_tokens) == (0, 80)
    assert recorder.encoded == [1, 1]  # the first request, then the uncached comparison run


async def test_several_images_and_a_mix_of_cached_and_new(
    adapter: LocalVLMAdapter, recorder: Recorder
) -> None:
    two = await same_as_uncached(adapter, recorder, [Message("user", ("Compare", A, "with", B))])
    assert two.usage.cached_tokens == 0
    assert recorder.encoded == [2, 2]
    mixed = [Message("user", ("Now", C, "against", A, "and", B, "again", C))]
    done = await same_as_uncached(adapter, recorder, mixed)
    c_tokens = (288 // 32) * (320 // 32)
    # A and B cached; C encoded once although it appears twice.
    assert done.usage.cached_tokens == 0  # no prefix: features reused, tokens prefilled
    assert done.usage.image_tokens == 80 + 64 + 2 * c_tokens
    assert recorder.encoded == [2, 2, 4, 1]


async def test_images_in_different_turns(adapter: LocalVLMAdapter, recorder: Recorder) -> None:
    turn = [Message("user", (A, "What is it?"))]
    unrelated = [Message("user", (C, "Something else entirely, to move the rope state."))]
    previous = 0
    for follow_up in (("And the circle?",), (B, "And this one?"), ("Which was first?",)):
        done = await same_as_uncached(adapter, recorder, turn)
        assert done.usage.cached_tokens >= previous
        await generate(adapter, recorder, unrelated)
        # The re-tokenized answer may differ from the generated ids near its end.
        previous = done.usage.prompt_tokens - 1
        turn = [*turn, Message("assistant", (done.text,)), Message("user", follow_up)]
    final = await same_as_uncached(adapter, recorder, turn)
    assert final.usage.cached_tokens >= previous
    assert final.usage.prompt_tokens - final.usage.cached_tokens < 40


async def test_concurrent_requests_encode_a_shared_image_once(
    adapter: LocalVLMAdapter, recorder: Recorder
) -> None:
    conversations = [[Message("user", (f"Question {i}: what is it?", B))] for i in range(3)]
    expected = [await generate(adapter, recorder, c, CACHES_OFF) for c in conversations]
    recorder.encoded.clear()
    results = await asyncio.gather(*(collect(adapter.stream(request(c))) for c in conversations))
    assert recorder.encoded == [1]
    assert [r.usage.cached_tokens for r in results] == [0, 0, 0]
    assert [r.text for r in results] == [e[1].text for e in expected]


async def test_bypassing_one_cache(adapter: LocalVLMAdapter, recorder: Recorder) -> None:
    messages = [Message("user", (A, "Once more, what is in the picture?"))]
    await generate(adapter, recorder, messages)
    _, prefix_only = await generate(adapter, recorder, messages, CachePolicy(embedding=False))
    assert prefix_only.usage.cached_tokens == prefix_only.usage.prompt_tokens - 1
    _, embedding_only = await generate(adapter, recorder, messages, CachePolicy(prefix=False))
    assert embedding_only.usage.cached_tokens == 0
    assert recorder.encoded == [1]
    stats = adapter.cache_stats()
    assert stats["embedding"].entries == 1
    assert stats["prefix"].hits >= 1


async def test_observer_and_stats_agree(adapter: LocalVLMAdapter, recorder: Recorder) -> None:
    await generate(adapter, recorder, [Message("user", (C, "Stats?"))])
    await generate(adapter, recorder, [Message("user", (C, "Stats?"))])
    observer = adapter._reuse.embeddings.store._observer
    assert isinstance(observer, Observer)
    stats = adapter.cache_stats()
    for name in ("embedding", "prefix"):
        assert observer.counts.get((name, "hit"), 0) == stats[name].hits  # type: ignore[index]
        assert observer.counts.get((name, "miss"), 0) == stats[name].misses  # type: ignore[index]


async def test_tiny_caches_skip_oversize_features(tiny_model_dir: Path) -> None:
    config = LocalModelConfig(
        model=str(tiny_model_dir),
        dtype="float32",
        warmup=False,
        cache=CacheConfig(embedding_bytes=1000, prefix_bytes=0),
    )
    local = LocalVLMAdapter(config)
    await local.start()
    try:
        messages = [Message("user", (A, "Tiny cache?"))]
        first = await collect(local.stream(request(messages)))
        second = await collect(local.stream(request(messages)))
        assert first.text == second.text
        assert second.usage.cached_tokens == 0
        stats = local.cache_stats()
        assert (stats["embedding"].oversize, stats["embedding"].entries) == (2, 0)
        assert stats["prefix"].entries == 0
    finally:
        await local.aclose()


async def test_cache_scopes_never_share(adapter: LocalVLMAdapter, recorder: Recorder) -> None:
    """Tenant isolation: a conversation cached for one scope is invisible to another, which
    encodes and prefills again (and reports no cached tokens); the first scope still hits."""
    messages = [Message("user", (A, "What is in the picture? Answer briefly."))]
    params = SamplingParams(8, temperature=0.0)

    async def ask(scope: str) -> Completion:
        return await collect(
            adapter.stream(GenerationRequest(tuple(messages), params, cache_scope=scope))
        )

    first = await ask("key:alice")
    again = await ask("key:alice")
    other = await ask("key:bob")
    assert first.usage.cached_tokens == 0
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1
    assert other.usage.cached_tokens == 0
    assert recorder.encoded == [1, 1]  # alice once, bob once
    assert other.text == first.text == again.text
