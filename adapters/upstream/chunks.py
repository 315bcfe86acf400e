"""One upstream stream chunk at a time: content text, function-call pieces, finish and usage.

``read_chunk`` turns the ``data`` of one SSE event into the events to yield, and keeps what the
stream has said so far in a ``StreamTally``. Function calls arrive in OpenAI's streaming shape
(``delta.tool_calls[]`` with ``index``, and ``id`` / ``function.name`` on a call's first piece);
they leave as ``ToolCallDelta`` values under the contract's rule: the first piece of each call
carries its id and name, later ones only argument text. So an upstream that repeats the id and
name on every piece, numbers its calls from 1, or sends no id (one is made up: ``call_`` + hex)
still streams the way the gateway's clients expect. A stream with calls finishes
``tool_calls`` whatever the upstream called it (``stop``, ``tool_calls``, ``function_call``),
unless it was cut by ``length``.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from adapters.base import Delta, FinishReason, StreamEvent, ToolCallDelta, Usage
from adapters.stops import StopMatcher
from adapters.upstream.errors import UpstreamUnavailable, upstream_message
from adapters.upstream.wire import parse_usage

__all__ = ("StreamTally", "read_chunk")

log = logging.getLogger("adapters.upstream.adapter")


@dataclass
class StreamTally:
    """What one upstream stream has said so far: its finish reason, usage, content chunks and
    the calls begun."""

    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    chunks: int = 0
    """Chunks with content or call pieces: the completion tokens when no usage comes."""
    done: bool = False
    calls: dict[int, int] = field(default_factory=dict)
    """The upstream's index of each call begun -> its index here (0, 1, ... in order)."""


def read_chunk(
    data: str, tally: StreamTally, matcher: StopMatcher, where: str
) -> list[StreamEvent]:
    """The events one SSE payload yields: text now safe to emit (stop strings held back), then
    call pieces. Raises ``UpstreamUnavailable`` for a malformed chunk or an error frame."""
    if data.strip() == "[DONE]":
        tally.done = True
        return []
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise UpstreamUnavailable("The upstream sent a malformed stream.") from None
    if not isinstance(chunk, dict):
        raise UpstreamUnavailable("The upstream sent a malformed stream.")
    if chunk.get("error") or chunk.get("object") == "error":  # OpenAI's or vLLM's shape
        message, _ = upstream_message(data.encode())
        log.warning("upstream %s stream error: %.200r", where, message)
        raise UpstreamUnavailable("The upstream model failed while generating.")
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        tally.usage = parse_usage(usage) or tally.usage
    text = ""
    calls: list[StreamEvent] = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            tally.chunks += 1
            text += matcher.feed(content)
        pieces = delta.get("tool_calls")
        if isinstance(pieces, list) and pieces:
            tally.chunks += 1
            calls += [c for p in pieces if (c := _call_piece(p, tally)) is not None]
        reason = choice.get("finish_reason")
        if reason == "abort":
            raise UpstreamUnavailable("The upstream model aborted the generation.")
        if reason:
            tally.finish_reason = (
                "length" if reason == "length" else "tool_calls" if tally.calls else "stop"
            )
    return [Delta(text), *calls] if text else calls


def _call_piece(piece: Any, tally: StreamTally) -> ToolCallDelta | None:
    """One ``tool_calls[]`` item as a ``ToolCallDelta`` (None when it adds nothing)."""
    if not isinstance(piece, dict):
        raise UpstreamUnavailable("The upstream sent a malformed stream.")
    index, function = piece.get("index", 0), piece.get("function")
    function = function if isinstance(function, dict) else {}
    if not isinstance(index, int) or isinstance(index, bool):
        raise UpstreamUnavailable("The upstream sent a malformed stream.")
    arguments = function.get("arguments")
    arguments = arguments if isinstance(arguments, str) else ""
    if index in tally.calls:
        return ToolCallDelta(tally.calls[index], arguments=arguments) if arguments else None
    tally.calls[index] = len(tally.calls)
    call_id, name = piece.get("id"), function.get("name")
    return ToolCallDelta(
        tally.calls[index],
        id=call_id if isinstance(call_id, str) and call_id else f"call_{uuid.uuid4().hex[:24]}",
        name=name if isinstance(name, str) else "",
        arguments=arguments,
    )
