"""LocalVLMAdapter on the tiny random Qwen3-VL with logits processors in the decoding loop:
response_format steering and its errors, a failing generation, and cancellation within a step."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from typing import Any

import pytest
import torch
from transformers import LogitsProcessor

from adapters.base import Delta, InvalidResponseFormat, ResponseFormat, collect
from adapters.local import GenerationFailed, LocalVLMAdapter
from tests.integration.local_adapter_support import CONVERSATIONS, request
from tests.reference import Reference

pytestmark = pytest.mark.asyncio(loop_scope="module")


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
