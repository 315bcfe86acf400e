"""Tool calls out of the generated text: Qwen's ``<tool_call>`` blocks become ``ToolCallDelta``s.

Policy (the decoding side is ``adapters.local.toolgrammar``):

- Text outside call blocks streams as ``Delta`` as usual. What may still turn out to start a call
  (a prefix of ``<tool_call>`` at the end of the text so far) is held back, and so is trailing
  whitespace: whitespace next to a call is dropped (the template writes a newline between a
  turn's text and its calls, and between calls).
- A block ``<tool_call>{json}</tool_call>`` whose JSON is ``{"name": <a callable function>,
  "arguments": <an object>}`` becomes one ``ToolCallDelta`` with a fresh id (``call_`` and 24 hex
  digits), the name and the arguments as compact JSON text. A ``</tool_call>`` inside a JSON
  string does not end a block: a block ends at the first ``</tool_call>`` before which its JSON
  parses.
- A block that never completes (``max_tokens``, a stop string, a malformed call under ``auto``)
  is returned as text when the generation ends, never an error.
- ``finish_reason`` ``stop`` becomes ``tool_calls`` when calls were returned; ``length`` stays
  (the answer was cut, possibly inside a further call). Usage is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterable

from adapters.base import Delta, Finish, StreamEvent, ToolCallDelta

__all__ = ("CALL_CLOSE", "CALL_OPEN", "ToolCallParser", "new_call_id")

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


def new_call_id() -> str:
    """An OpenAI-style call id: ``call_`` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


class ToolCallParser:
    """One generation's events in, the same with call blocks turned into ``ToolCallDelta``s out.

    ``names``: the functions a call may name (a block naming another one stays text).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)
        self._text = ""
        """Text not released yet (outside a block), or the block's text after ``<tool_call>``."""
        self._opening = ""
        """Inside a block: the text that opened it (whitespace before it, ``<tool_call>``)."""
        self._scan = 0
        """Inside a block: where to look for its ``</tool_call>`` next."""
        self._after_call = False
        """Whitespace that follows a call is dropped."""
        self.calls = 0
        """Calls returned so far."""

    def handle(self, event: StreamEvent) -> list[StreamEvent]:
        """The events to send for ``event``."""
        if isinstance(event, Delta):
            return self.feed(event.text)
        if isinstance(event, Finish):
            out = self.finish()
            if self.calls and event.finish_reason == "stop":
                event = dataclasses.replace(event, finish_reason="tool_calls")
            return [*out, event]
        return [event]

    def feed(self, text: str) -> list[StreamEvent]:
        """The events for the next piece of generated ``text``."""
        self._text += text
        out: list[StreamEvent] = []
        while self._opening:  # inside a block
            end = self._text.find(CALL_CLOSE, self._scan)
            if end < 0:
                self._scan = max(self._scan, len(self._text) - len(CALL_CLOSE) + 1)
                return out
            call = self._call(self._text[:end])
            if call is None:  # inside a string, or malformed: look further
                self._scan = end + 1
                continue
            out.append(call)
            self._text = self._text[end + len(CALL_CLOSE) :]
            self._opening, self._after_call = "", True
        if self._after_call:
            self._text = self._text.lstrip()
            self._after_call = not self._text
        start = self._text.find(CALL_OPEN)
        if start >= 0:
            before = self._text[:start]
            if before.rstrip():
                out.append(Delta(before.rstrip()))
            self._opening = before[len(before.rstrip()) :] + CALL_OPEN
            self._text, self._scan = self._text[start + len(CALL_OPEN) :], 0
            return out + self.feed("")
        held = _held(self._text)
        if len(self._text) > held:
            out.append(Delta(self._text[: len(self._text) - held]))
            self._text = self._text[len(self._text) - held :]
        return out

    def finish(self) -> list[StreamEvent]:
        """The events for what is held back when generation ends: an unfinished block, as text;
        trailing whitespace unless calls were returned."""
        text = self._opening + self._text
        self._opening = self._text = ""
        if not text or (self.calls and not text.strip()):
            return []
        return [Delta(text)]

    def _call(self, block: str) -> ToolCallDelta | None:
        try:
            value = json.loads(block)
        except (ValueError, RecursionError):
            return None
        name = value.get("name") if isinstance(value, dict) else None
        if not isinstance(name, str) or name not in self._names:
            return None
        arguments = value.get("arguments", {})
        if not isinstance(arguments, dict):
            return None
        text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        self.calls += 1
        return ToolCallDelta(self.calls - 1, new_call_id(), name, text)


def _held(text: str) -> int:
    """How many characters at the end of ``text`` to hold back: a prefix of ``<tool_call>``
    and the whitespace before it."""
    partial = next(
        (k for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1) if CALL_OPEN[:k] == text[-k:]),
        0,
    )
    rest = text[: len(text) - partial]
    return partial + len(rest) - len(rest.rstrip())
