"""LocalVLMAdapter on the tiny random Qwen3-VL: same tokens as model.generate, stops, cancel."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from transformers import LogitsProcessor

from adapters.base import (
    AdapterError,
    Delta,
    Finish,
    GenerationRequest,
    ImageInput,
    InvalidResponseFormat,
    Message,
    PromptTooLong,
    ResponseFormat,
    SamplingParams,
    collect,
)
from adapters.local import CACHES_OFF, GenerationFailed, LocalModelConfig, LocalVLMAdapter
from adapters.local.worker import encoder_outputs
from tests.reference import Reference
from tests.support import make_image

pytestmark = pytest.mark.asyncio(loop_scope="module")


def image(width: int, height: int, seed: int = 0) -> ImageInput:
    return ImageInput(make_image(width, height, seed=seed), digest=f"{width}x{height}/{seed}")


CONVERSATIONS = {
    "text": [Message("system", ("You are terse.",)), Message("user", ("Describe the weather",))],
    "image": [Message("user", (image(320, 256), "What is in the picture?"))],
    "images": [Message("user", ("Compare", image(256, 256, 1), "with", image(288, 320, 2)))],
    "image_earlier_turn": [
        Message("user", (image(320, 256, 3), "What is it?")),
        Message("assistant", ("A red square.",)),
        Message("user", ("And the circle?",)),
    ],
}


def request(messages: list[Message], max_tokens: int = 32, **sampling: Any) -> GenerationRequest:
    fmt = sampling.pop("response_format", None)
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    return GenerationRequest(messages=tuple(messages), sampling=params, response_format=fmt)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(tiny_model_dir: Path) -> AsyncIterator[LocalVLMAdapter]:
    local = LocalVLMAdapter(LocalModelConfig(model=str(tiny_model_dir), dtype="float32"))
    await local.start()
    yield local
    await local.aclose()


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


class Probe(LogitsProcessor):
    """Counts decode steps; bans end-of-turn tokens, or forces one token, to steer a run."""

    def __init__(self, ban: set[int] = frozenset(), force: int | None = None) -> None:  # type: ignore[assignment]
        self.ban, self.force, self.calls = sorted(ban), force, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.force is not None:
            forced = torch.full_like(scores, -float("inf"))
            forced[:, self.force] = 0.0
            return forced
        scores[:, self.ban] = -float("inf")
        return scores


def install_constraints(monkeypatch: pytest.MonkeyPatch, make: Any) -> list[Any]:
    """A stand-in ``adapters.local.constraints`` whose logits_processor_for calls ``make``."""
    calls: list[Any] = []
    module = types.ModuleType("adapters.local.constraints")

    def logits_processor_for(
        fmt: ResponseFormat, tokenizer: Any, vocab_size: int, *, max_tokens: int
    ) -> Any:
        calls.append((fmt, vocab_size, max_tokens))
        return make()

    module.logits_processor_for = logits_processor_for  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adapters.local.constraints", module)
    return calls


JSON = ResponseFormat("json_object")


async def test_response_format_processor_steers_decoding(
    adapter: LocalVLMAdapter, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = reference.processor.tokenizer.convert_tokens_to_ids("{")
    calls = install_constraints(monkeypatch, lambda: Probe(force=token))
    done = await collect(adapter.stream(request(CONVERSATIONS["text"], 6, response_format=JSON)))
    assert done.text == "{" * 6
    assert calls == [(JSON, reference.model.config.text_config.vocab_size, 6)]


async def test_json_schema_output_parses_with_the_real_constraints(
    adapter: LocalVLMAdapter,
) -> None:
    constraints = pytest.importorskip("adapters.local.constraints")
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["label", "count"],
    }
    fmt = ResponseFormat("json_schema", schema=schema, strict=True)
    done = await collect(adapter.stream(request(CONVERSATIONS["image"], 64, response_format=fmt)))
    assert done.finish_reason == "stop"
    value = json.loads(done.text)
    assert set(value) == {"label", "count"}
    assert isinstance(value["count"], int)
    constraints.validate_output(done.text, fmt)


async def test_response_format_errors_are_ours(
    adapter: LocalVLMAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "adapters.local.constraints", None)
    with pytest.raises(InvalidResponseFormat, match="unavailable"):
        await collect(adapter.stream(request(CONVERSATIONS["text"], response_format=JSON)))

    def broken() -> Any:
        raise ValueError("schema at 0x7f00deadbeef")

    install_constraints(monkeypatch, broken)
    with pytest.raises(InvalidResponseFormat) as info:
        await collect(adapter.stream(request(CONVERSATIONS["text"], response_format=JSON)))
    assert "0x" not in str(info.value)
    assert adapter.worker.pending == 0


class Explodes(LogitsProcessor):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error at 0x7f00deadbeef")


async def test_a_failing_generation_is_reported_generically_and_the_worker_survives(
    adapter: LocalVLMAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_constraints(monkeypatch, Explodes)
    with pytest.raises(GenerationFailed) as info:
        await collect(adapter.stream(request(CONVERSATIONS["text"], response_format=JSON)))
    assert "0x" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # kept for the server log
    done = await collect(adapter.stream(request(CONVERSATIONS["text"], max_tokens=2)))
    assert done.usage.completion_tokens == 2


@pytest.mark.parametrize("how", ["aclose", "task_cancel"])
async def test_cancelling_stops_the_worker_within_a_step(
    adapter: LocalVLMAdapter, reference: Reference, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # End-of-turn tokens are banned, so only cancellation can end this 20k-token run early.
    probe = Probe(ban=reference.eos)
    install_constraints(monkeypatch, lambda: probe)
    stream = adapter.stream(request(CONVERSATIONS["image"], 20000, response_format=JSON))
    if how == "aclose":
        assert isinstance(await anext(stream), Delta)
        await stream.aclose()
    else:
        streaming = asyncio.Event()

        async def consume() -> None:
            async for _ in stream:
                streaming.set()

        task = asyncio.create_task(consume())
        await streaming.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    steps_at_cancel = probe.calls
    start = time.monotonic()
    assert await asyncio.to_thread(adapter.worker.wait_idle, 5.0)
    assert time.monotonic() - start < 1.0
    assert probe.calls - steps_at_cancel <= 2
    assert probe.calls < 1000
    monkeypatch.delitem(sys.modules, "adapters.local.constraints")
    done = await collect(adapter.stream(request(CONVERSATIONS["text"], max_tokens=3)))
    assert done.usage.completion_tokens == 3


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
