"""gateway.chat.tools on its own: stream pieces and what CallWatch counts."""

from __future__ import annotations

import msgspec
import pytest

from adapters.base import Delta, ToolCallDelta, Tools, ToolSpec
from gateway.chat.tools import CallWatch, chunk_calls
from gateway.observability import tool_metrics

TOOLS = Tools((ToolSpec("f"),))


def test_a_first_piece_with_arguments_is_split_as_openai_streams_it() -> None:
    pieces = chunk_calls(ToolCallDelta(2, id="call_x", name="f", arguments='{"a": 1}'))
    assert [msgspec.to_builtins(p) for p in pieces] == [
        {
            "index": 2,
            "id": "call_x",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 2, "function": {"arguments": '{"a": 1}'}},
    ]
    assert chunk_calls(ToolCallDelta(0)) == []  # a piece that adds nothing sends nothing


@pytest.mark.parametrize(
    ("tools", "events", "result"),
    [
        (TOOLS, [ToolCallDelta(0, "a", "f"), ToolCallDelta(0, arguments="{}")], "call"),
        (TOOLS, [Delta("text <tool"), Delta("_call> {")], "malformed"),
        (Tools((ToolSpec("f"),), "required"), [Delta("plain text")], "missing"),
        (Tools((ToolSpec("f"),), "function", "f"), [Delta("<tool_call>")], "malformed"),
        (TOOLS, [Delta("plain text")], None),
        (Tools((ToolSpec("f"),), "none"), [Delta("<tool_call>")], None),
        (None, [Delta("<tool_call>")], None),
    ],
)
def test_call_watch_counts_one_result_per_answer(
    monkeypatch: pytest.MonkeyPatch,
    tools: Tools | None,
    events: list[Delta | ToolCallDelta],
    result: str | None,
) -> None:
    counted: list[tuple[str, int]] = []
    monkeypatch.setattr(
        tool_metrics, "count_tool_calls", lambda r, n=1, *, model: counted.append((r, n))
    )
    watch = CallWatch(tools, "m")
    for event in events:
        watch.see(event)
    watch.finish()
    assert counted == ([(result, 1)] if result else [])
