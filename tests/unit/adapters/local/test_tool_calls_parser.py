"""ToolCallParser: Qwen call blocks out of streamed text, whatever the chunking; text stays text."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import Delta, Finish, StreamEvent, ToolCallDelta, Usage, assemble_calls
from adapters.local.toolcalls import ToolCallParser


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


WEATHER = block('{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}')
TIME = block('{"name": "get_time", "arguments": {}}')
NAMES = ("get_weather", "get_time")
USAGE = Usage(prompt_tokens=5, completion_tokens=7)


def run(pieces: list[str], reason: str = "stop") -> list[StreamEvent]:
    parser = ToolCallParser(NAMES)
    events: list[StreamEvent] = []
    for piece in pieces:
        events += parser.handle(Delta(piece))
    return events + parser.handle(Finish(reason, USAGE))  # type: ignore[arg-type]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def calls_of(events: list[StreamEvent]) -> list[tuple[str, dict[str, object]]]:
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    return [(c.name, json.loads(c.arguments)) for c in assemble_calls(deltas)]


def finish_of(events: list[StreamEvent]) -> str:
    assert isinstance(events[-1], Finish)
    assert sum(isinstance(e, Finish) for e in events) == 1
    return events[-1].finish_reason


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


CASES = {
    "text only": ("Hello there.\n", "Hello there.\n", [], "stop"),
    "one call": (WEATHER, "", [("get_weather", {"city": "Paris", "days": 2})], "tool_calls"),
    "text then call": (
        "Let me check.\n" + WEATHER,
        "Let me check.",
        [("get_weather", {"city": "Paris", "days": 2})],
        "tool_calls",
    ),
    "parallel calls": (
        WEATHER + "\n" + TIME + "\n",
        "",
        [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})],
        "tool_calls",
    ),
    "text between calls": (
        WEATHER + "\nAnd also:\n" + TIME,
        "And also:",
        [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})],
        "tool_calls",
    ),
    "marker inside a string": (
        block('{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}'),
        "",
        [("get_weather", {"city": "a</tool_call>b"})],
        "tool_calls",
    ),
    "unknown function stays text": (
        '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>',
        [],
        "stop",
    ),
    "arguments not an object": (
        '<tool_call>\n{"name": "get_time", "arguments": [1]}\n</tool_call>',
        '<tool_call>\n{"name": "get_time", "arguments": [1]}\n</tool_call>',
        [],
        "stop",
    ),
    "unfinished call is text": (
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"ci',
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"ci',
        [],
        "stop",
    ),
    "call then unfinished call": (
        TIME + "\n<tool_call>\n{",
        "<tool_call>\n{",
        [("get_time", {})],
        "tool_calls",
    ),
    "partial marker at the end is text": ("a <tool_ca", "a <tool_ca", [], "stop"),
    "unhashable name": (
        '<tool_call>{"name": [1], "arguments": {}}</tool_call>',
        '<tool_call>{"name": [1], "arguments": {}}</tool_call>',
        [],
        "stop",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_whole_text(name: str) -> None:
    text, content, calls, reason = CASES[name]
    events = run([text])
    assert text_of(events) == content
    assert calls_of(events) == calls
    assert finish_of(events) == reason


@given(st.sampled_from(list(CASES)), st.lists(st.integers(0, 120), max_size=8))
def test_any_chunking_gives_the_same_result(name: str, cuts: list[int]) -> None:
    text, content, calls, reason = CASES[name]
    events = run(chunked(text, cuts))
    assert text_of(events) == content
    assert calls_of(events) == calls
    assert finish_of(events) == reason


@given(st.text(alphabet='ab <>/_tolc\n"{}', max_size=60), st.lists(st.integers(0, 60)))
def test_text_without_calls_passes_through(text: str, cuts: list[int]) -> None:
    events = run(chunked(text, cuts))
    if not any(isinstance(e, ToolCallDelta) for e in events):
        assert text_of(events) == text


def test_text_streams_before_a_call_and_each_call_is_one_delta_with_an_id() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.handle(Delta("Checking the ")) == [Delta("Checking the")]  # trailing space held
    assert parser.handle(Delta("weather.\n")) == [Delta(" weather.")]
    assert parser.handle(Delta(WEATHER[:20])) == []
    [call] = parser.handle(Delta(WEATHER[20:]))
    assert isinstance(call, ToolCallDelta)
    assert call.index == 0
    assert call.name == "get_weather"
    assert call.arguments == '{"city":"Paris","days":2}'
    assert call.id is not None
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    [second] = parser.handle(Delta("\n" + TIME))
    assert isinstance(second, ToolCallDelta)
    assert second.index == 1
    assert second.id != call.id


def test_length_stays_length_and_other_events_pass() -> None:
    events = run([TIME, "\n<tool_call>\n{"], reason="length")
    assert finish_of(events) == "length"
    assert calls_of(events) == [("get_time", {})]
    parser = ToolCallParser(NAMES)
    other = ToolCallDelta(0, "call_x", "f", "{}")
    assert parser.handle(other) == [other]


def test_arguments_keep_unicode() -> None:
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
    [call] = [e for e in run([block]) if isinstance(e, ToolCallDelta)]
    assert call.arguments == '{"city":"北京"}'
