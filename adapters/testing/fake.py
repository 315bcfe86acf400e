"""A real in-memory backend for tests: you ``enqueue()`` answers and it streams them.

It honours the contract like a model would: words are tokens, ``max_tokens`` ends with
``length``, stop strings are cut by ``StopMatcher``, prompt tokens count each image's visual
tokens, and closing the stream early cancels it. ``requests`` records what it was asked, so a
test can see the shaped prompt the gateway produced.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from adapters.base import (
    Capabilities,
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ImageInput,
    PromptTooLong,
    StreamEvent,
    Usage,
)
from adapters.stops import StopMatcher

__all__ = ("FakeAdapter",)


class FakeAdapter:
    def __init__(
        self,
        capabilities: Capabilities | None = None,
        *,
        default_answer: str = "This is a fake answer.",
        token_delay_s: float = 0.0,
    ) -> None:
        self.capabilities = capabilities or Capabilities(model_id="fake-vlm")
        self.default_answer = default_answer
        self.token_delay_s = token_delay_s
        """Seconds between tokens, to let tests observe streaming, cancellation and queueing."""
        self.requests: list[GenerationRequest] = []
        self.started = False
        self.closed = False
        self.active = 0
        """Generations currently running (returns to 0 after cancellation)."""
        self.cancelled = 0
        self.generating = asyncio.Event()
        """Set when a generation starts (tests wait on it instead of polling)."""
        self._answers: deque[str] = deque()

    def enqueue(self, *answers: str) -> None:
        """Answers for the next requests, in order; afterwards ``default_answer``."""
        self._answers.extend(answers)

    async def start(self) -> None:
        self.started = True

    async def check(self, request: GenerationRequest) -> None:
        """Nothing to prepare: the fake answers whatever was enqueued."""

    async def aclose(self) -> None:
        self.closed = True

    def prompt_tokens(self, request: GenerationRequest) -> tuple[int, int]:
        """(prompt tokens, image tokens): words of text plus each image's visual tokens."""
        words = image_tokens = 0
        for message in request.messages:
            words += 2  # role markers, as a chat template adds
            for part in message.content:
                if isinstance(part, ImageInput):
                    image_tokens += self.capabilities.image_tokens(*part.size)
                else:
                    words += len(part.split())
        return words + image_tokens, image_tokens

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        prompt, image_tokens = self.prompt_tokens(request)
        max_tokens = request.sampling.max_tokens
        if prompt + max_tokens > self.capabilities.context_length:
            raise PromptTooLong(prompt, max_tokens, self.capabilities.context_length)
        self.requests.append(request)
        answer = self._answers.popleft() if self._answers else self.default_answer
        tokens = answer.split(" ")
        matcher = StopMatcher(request.sampling.stop)
        finish_reason: FinishReason = "stop"
        produced = 0
        self.active += 1
        self.generating.set()
        try:
            for i, token in enumerate(tokens):
                if produced == max_tokens:
                    finish_reason = "length"
                    break
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                produced += 1
                text = matcher.feed(token if i == 0 else " " + token)
                if text:
                    yield Delta(text)
                if matcher.stopped:
                    break
            tail = matcher.flush()
            if tail:
                yield Delta(tail)
            usage = Usage(prompt, produced, image_tokens=image_tokens)
            yield Finish(finish_reason, usage)
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
