"""A real in-memory backend for tests: you ``enqueue()`` answers and it streams them.

It honours the contract like a model would: words are tokens, ``max_tokens`` ends with
``length``, stop strings are cut by ``StopMatcher``, prompt tokens count each image's visual
tokens, and closing the stream early cancels it. ``requests`` records what it was asked, so a
test can see the shaped prompt the gateway produced.

A ``ToolAnswer`` answers with function calls the way an engine streams them: its text first,
then per call a ``ToolCallDelta`` with the id and name, then the arguments in pieces of
``ARGUMENT_PIECE`` characters; each event is one token, and the answer finishes ``tool_calls``
(``length`` when ``max_tokens`` cuts it first). The fake does not check ``request.tools``: a
test enqueues whatever answer it needs, malformed ones included.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from adapters.base import (
    Capabilities,
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ImageInput,
    PromptTooLong,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from adapters.stops import StopMatcher

__all__ = ("ARGUMENT_PIECE", "FakeAdapter", "ToolAnswer")

ARGUMENT_PIECE = 8
"""Characters of arguments per streamed piece: several pieces per call, as a model streams."""


@dataclass(frozen=True)
class ToolAnswer:
    """An answer that calls functions: ``text`` (may be empty) before ``calls``."""

    calls: tuple[ToolCall, ...]
    text: str = ""


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
        self._answers: deque[str | ToolAnswer] = deque()

    def enqueue(self, *answers: str | ToolAnswer) -> None:
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
        calls = answer.calls if isinstance(answer, ToolAnswer) else ()
        matcher = StopMatcher(request.sampling.stop)
        finish_reason: FinishReason = "tool_calls" if calls else "stop"
        produced = 0
        self.active += 1
        self.generating.set()
        try:
            for unit in _units(answer):
                if produced == max_tokens:
                    finish_reason = "length"
                    break
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                produced += 1
                if isinstance(unit, ToolCallDelta):
                    tail = matcher.flush()  # text held for a stop string comes before the call
                    if tail:
                        yield Delta(tail)
                    yield unit
                    continue
                text = matcher.feed(unit)
                if text:
                    yield Delta(text)
                if matcher.stopped:
                    finish_reason = "stop"
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


def _units(answer: str | ToolAnswer) -> Iterator[str | ToolCallDelta]:
    """The answer's tokens: words of text (spaces attached), then each call's pieces."""
    text = answer.text if isinstance(answer, ToolAnswer) else answer
    if text or not isinstance(answer, ToolAnswer):  # "" is one empty token, as it always was
        for i, word in enumerate(text.split(" ")):
            yield word if i == 0 else " " + word
    for index, call in enumerate(answer.calls if isinstance(answer, ToolAnswer) else ()):
        yield ToolCallDelta(index, id=call.id, name=call.name)
        for start in range(0, len(call.arguments), ARGUMENT_PIECE):
            yield ToolCallDelta(index, arguments=call.arguments[start : start + ARGUMENT_PIECE])
