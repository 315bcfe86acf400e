"""LocalVLMAdapter on the tiny random Qwen3-VL: same tokens as model.generate, stops, lengths,
seeds, concurrency. Logits processors (response_format, failures, cancel):
``test_local_adapter_processors.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from adapters.base import AdapterError, Delta, Finish, ImageInput, Message, PromptTooLong, collect
from adapters.local import CACHES_OFF, LocalModelConfig, LocalVLMAdapter
from adapters.local.vision import encoder_outputs
from tests.integration.local_adapter_support import CONVERSATIONS, request
from tests.reference import Reference

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("name", CONVERSATIONS)
async def test_greedy_stream_equals_model_generate(
    adapter: LocalVLMAdapter, reference: Reference, name: str
) -> None:
    messages = CONVERSATIONS[name]
    ids = reference.generate(messages, max_new_tokens=40)
    events = [event async for event in adapter.stream(request(messages, max_tokens=40))]
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert all(isinstance(e, Delta) and e.text for e in events[:-1])
    assert "".join(e.text for e in events[:-1] if isinstance(e, Delta)) == reference.text(ids)
    assert finish.usage.completion_tokens == len(ids)
    assert finish.finish_reason == ("stop" if ids[-1] in reference.eos else "length")
    prompt = reference.inputs(messages)
    assert finish.usage.prompt_tokens == prompt["input_ids"].shape[1]
    grid = prompt.get("image_grid_thw")
    assert finish.usage.image_tokens == (0 if grid is None else int(grid.prod(-1).sum()) // 4)
    expected_timings = {"queue", "prefill", "decode"} | (
        {"vision_encode"} if grid is not None else set()
    )
    assert set(finish.timings) == expected_timings
    assert all(v >= 0 for v in finish.timings.values())


async def test_end_of_turn_token_finishes_with_stop(
    adapter: LocalVLMAdapter, reference: Reference
) -> None:
    messages = [Message("user", ("Why?",))]
    ids = reference.generate(messages, max_new_tokens=64)
    assert ids[-1] in reference.eos, "precondition: this prompt ends by itself"
    done = await collect(adapter.stream(request(messages, max_tokens=64)))
    assert (done.finish_reason, done.usage.completion_tokens) == ("stop", len(ids))
    assert done.text == reference.text(ids)


async def test_precomputed_vision_features_give_identical_tokens(
    adapter: LocalVLMAdapter, reference: Reference
) -> None:
    messages = CONVERSATIONS["images"]
    images = [p for m in messages for p in m.content if isinstance(p, ImageInput)]
    features = await adapter.encode_images(images)
    assert [f.tokens for f in features] == [64, 90]
    assert all(len(f.deepstack) == 2 and f.nbytes > 0 for f in features)
    with_pixels = reference.generate(messages, max_new_tokens=24)
    precomputed = reference.generate(
        messages, max_new_tokens=24, mm_encoder_outputs={"image": encoder_outputs(features)}
    )
    assert precomputed == with_pixels
    # Each image's features depend on its own pixels only: encoded alone, the same values.
    alone = await adapter.encode_images(images[1:], caches=CACHES_OFF)  # really recompute
    torch.testing.assert_close(alone[0].embeds, features[1].embeds, rtol=1e-4, atol=1e-5)


async def test_stop_string_cuts_the_text_and_ends_generation(adapter: LocalVLMAdapter) -> None:
    messages = CONVERSATIONS["text"]
    full = await collect(adapter.stream(request(messages, max_tokens=40)))
    stop = full.text[10:13]
    cut = await collect(adapter.stream(request(messages, max_tokens=40, stop=(stop, "\x00"))))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text
    assert cut.usage.completion_tokens < full.usage.completion_tokens


async def test_max_tokens_finishes_with_length(adapter: LocalVLMAdapter) -> None:
    done = await collect(adapter.stream(request(CONVERSATIONS["text"], max_tokens=5)))
    assert (done.finish_reason, done.usage.completion_tokens) == ("length", 5)


async def test_prompt_too_long_is_raised_before_any_event(adapter: LocalVLMAdapter) -> None:
    messages = CONVERSATIONS["image"]
    prompt_tokens = adapter._builder.build(messages).prompt_tokens
    fits = adapter.capabilities.context_length - prompt_tokens
    stream = adapter.stream(request(messages, max_tokens=fits + 1))
    with pytest.raises(PromptTooLong) as info:
        await anext(stream)
    assert (info.value.prompt_tokens, info.value.max_tokens) == (prompt_tokens, fits + 1)
    assert adapter.worker.pending == 0
    done = await collect(adapter.stream(request(messages, max_tokens=1)))
    assert done.usage.prompt_tokens + fits <= adapter.capabilities.context_length


async def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng(
    adapter: LocalVLMAdapter,
) -> None:
    messages = CONVERSATIONS["image"]
    state = torch.random.get_rng_state()

    async def sample(seed: int) -> str:
        req = request(messages, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed)
        return (await collect(adapter.stream(req))).text

    first, again, other = await sample(7), await sample(7), await sample(8)
    greedy = (await collect(adapter.stream(request(messages, max_tokens=24)))).text
    assert first == again
    assert len({first, other, greedy}) == 3
    assert torch.equal(torch.random.get_rng_state(), state)


async def test_concurrent_streams_do_not_interleave(
    adapter: LocalVLMAdapter, reference: Reference
) -> None:
    names = list(CONVERSATIONS)
    results = await asyncio.gather(
        *(collect(adapter.stream(request(CONVERSATIONS[n], max_tokens=16))) for n in names)
    )
    for name, result in zip(names, results, strict=True):
        assert result.text == reference.text(reference.generate(CONVERSATIONS[name], 16))


async def test_closed_adapter_refuses_work(tiny_model_dir: Path) -> None:
    local = LocalVLMAdapter(
        LocalModelConfig(model=str(tiny_model_dir), dtype="float32", warmup=False)
    )
    await local.start()
    await local.aclose()
    with pytest.raises(AdapterError):
        await collect(local.stream(request(CONVERSATIONS["text"])))
