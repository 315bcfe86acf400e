"""Prompts, requests and staggered clients shared by the continuous-batching tests
(``test_batching*.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from adapters.base import (
    Completion,
    Delta,
    GenerationRequest,
    ImageInput,
    Message,
    SamplingParams,
    StreamEvent,
    collect,
)
from adapters.local import CACHES_OFF, CachePolicy, LocalModelConfig, LocalVLMAdapter
from adapters.local.batching import DecodeBatch
from tests.support import make_image


def image(width: int, height: int, seed: int) -> ImageInput:
    return ImageInput(make_image(width, height, seed=seed), digest=f"batch-{width}x{height}/{seed}")


PROMPTS = {
    # Greedy on the tiny model: "hi", "picture", "two", "wide" and "count" run past 200 tokens,
    # "weather" ends by itself at 61, "why" at 8.
    "hi": [Message("user", ("Hi",))],
    "picture": [Message("user", (image(320, 256, 1), "What is in the picture?"))],
    "weather": [Message("system", ("You are terse.",)), Message("user", ("Describe the weather",))],
    "two": [Message("user", ("Compare", image(256, 256, 2), "with", image(288, 320, 3)))],
    "why": [Message("user", ("Why?",))],
    "wide": [Message("user", ("Unrelated:", image(512, 128, 4), "wide and short"))],
    "count": [Message("user", ("Count to twenty please",))],
}


def request(name: str, max_tokens: int, **sampling: Any) -> GenerationRequest:
    fmt = sampling.pop("response_format", None)
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    return GenerationRequest(tuple(PROMPTS[name]), params, response_format=fmt)


async def make_adapter(
    model_dir: Path, max_batch_size: int, observer: Any = None, **settings: Any
) -> LocalVLMAdapter:
    config = LocalModelConfig(
        model=str(model_dir),
        dtype="float32",
        warmup=False,
        max_batch_size=max_batch_size,
        **settings,
    )
    adapter = LocalVLMAdapter(config, engine_observer=observer)
    await adapter.start()
    return adapter


def batch_of(adapter: LocalVLMAdapter) -> DecodeBatch:
    batch = adapter._batch
    assert batch is not None
    return batch


class Client:
    """One streaming request as a task; ``started`` is set at its first text."""

    def __init__(
        self, adapter: LocalVLMAdapter, req: GenerationRequest, caches: CachePolicy
    ) -> None:
        self.started = asyncio.Event()
        self.events: list[StreamEvent] = []
        self.task = asyncio.create_task(self._run(adapter.stream(req, caches=caches)))

    async def _run(self, stream: AsyncIterator[StreamEvent]) -> Completion:
        async for event in stream:
            self.events.append(event)
            if isinstance(event, Delta):
                self.started.set()
        self.started.set()
        return await collect(_replay(self.events))


async def _replay(events: Sequence[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


async def staggered(
    adapter: LocalVLMAdapter,
    waves: Sequence[Sequence[GenerationRequest]],
    caches: CachePolicy = CACHES_OFF,
) -> list[Completion]:
    """Start each wave once the first request of the previous wave streams text; results in
    request order."""
    clients: list[Client] = []
    lead: Client | None = None
    for wave in waves:
        if lead is not None:
            await lead.started.wait()
        started = [Client(adapter, r, caches) for r in wave]
        lead = started[0]
        clients += started
    return list(await asyncio.gather(*(c.task for c in clients)))


async def until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` (worker state, which has no event to await) until true or timeout."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


def same(got: Completion, expected: Completion) -> None:
    assert (got.text, got.finish_reason) == (expected.text, expected.finish_reason)
    assert got.usage.prompt_tokens == expected.usage.prompt_tokens
    assert got.usage.completion_tokens == expected.usage.completion_tokens
    assert got.usage.image_tokens == expected.usage.image_tokens
