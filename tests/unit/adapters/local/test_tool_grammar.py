"""Tool-call grammars on the tiny Qwen tokenizer, decoded from random logits (no model): every
call parses, names a callable function and validates against its parameters."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch
import xgrammar as xgr

from adapters.base import (
    Delta,
    InvalidResponseFormat,
    InvalidTools,
    ResponseFormat,
    ToolCallDelta,
    Tools,
    ToolSpec,
)
from adapters.local.toolcalls import ToolCallParser
from adapters.local.toolgrammar import compile_tools, tool_processors
from adapters.testing.vocab import build_tokenizer

WEATHER = ToolSpec(
    "get_weather",
    "Weather at a place",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["c", "f"]},
        },
        "required": ["city", "days"],
    },
)
CLOCK = ToolSpec("get_time", "The time now")  # no parameters: any object
SPECS = (WEATHER, CLOCK)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer("tiny", model_max_length=4096)


def ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def decode(
    tokenizer: Any,
    tools: Tools,
    *,
    fmt: ResponseFormat | None = None,
    max_tokens: int = 80,
    seed: int = 0,
    force: dict[int, int] | None = None,
) -> tuple[str, bool]:
    """Sample from random logits through the processors: (text, ended on a stop token).
    ``force``: {step: token} gets a large logit boost at that step."""
    vocab = len(tokenizer)
    stops = set(ids(tokenizer, "<|im_end|>", "<|endoftext|>"))
    processors = tool_processors(tools, fmt, tokenizer, vocab, max_tokens=max_tokens)
    generator = torch.Generator().manual_seed(seed)
    sequence, out = [1, 2, 3], list[int]()
    for step in range(max_tokens):
        scores = torch.randn(1, vocab, generator=generator) * 3
        if force and step in force:
            scores[0, force[step]] += 100
        for processor in processors:
            scores = processor(torch.tensor([sequence]), scores)
        token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        sequence.append(token)
        if token in stops:
            return tokenizer.decode(out), True
        out.append(token)
    return tokenizer.decode(out), False


def parse(text: str, tools: Tools) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    parser = ToolCallParser(s.name for s in tools.callable)
    events = parser.feed(text) + parser.finish()
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    calls = [(e.name or "", json.loads(e.arguments)) for e in deltas]
    return "".join(e.text for e in events if isinstance(e, Delta)), calls


def check_calls(calls: list[tuple[str, dict[str, Any]]], tools: Tools) -> None:
    specs = {s.name: s for s in tools.callable}
    for name, arguments in calls:
        jsonschema.validate(arguments, specs[name].parameters or {"type": "object"})


@pytest.mark.parametrize(
    "tools",
    [
        Tools(SPECS, "required", parallel=False),
        Tools(SPECS, "required", parallel=True),
        Tools(SPECS, "function", "get_weather"),
    ],
    ids=["required", "required_parallel", "function"],
)
@pytest.mark.parametrize("seed", range(6))
def test_forced_calls_parse_and_validate(tokenizer: Any, tools: Tools, seed: int) -> None:
    text, stopped = decode(tokenizer, tools, seed=seed, max_tokens=120)
    assert stopped, text
    content, calls = parse(text, tools)
    assert content == ""
    assert calls
    check_calls(calls, tools)
    if not tools.parallel:
        assert len(calls) == 1
    if tools.choice == "function":
        assert {name for name, _ in calls} == {"get_weather"}


@pytest.mark.parametrize("max_tokens", [48, 64, 96])
def test_closing_mode_ends_the_call_inside_a_small_budget(tokenizer: Any, max_tokens: int) -> None:
    tools = Tools((WEATHER,), "required", parallel=True)
    for seed in range(4):
        text, stopped = decode(tokenizer, tools, seed=seed, max_tokens=max_tokens)
        assert stopped, text
        _, calls = parse(text, tools)
        assert calls
        check_calls(calls, tools)


def test_parallel_allows_several_calls_one_per_line(tokenizer: Any) -> None:
    one = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    two = one + "\n" + one
    for parallel, accepts_two in ((True, True), (False, False)):
        grammar = compile_tools(Tools(SPECS, "required", parallel=parallel), None, tokenizer, 2001)
        matcher = xgr.GrammarMatcher(grammar)
        assert (matcher.accept_string(two) and matcher.is_completed()) is accepts_two
        matcher = xgr.GrammarMatcher(grammar)
        assert matcher.accept_string(one)
        assert matcher.is_completed()
    spaced = '<tool_call>\n{"name": "get_time", "arguments": {} }\n</tool_call>'
    assert not xgr.GrammarMatcher(grammar).accept_string(spaced)  # no optional whitespace


def test_auto_is_free_text_until_the_call_token(tokenizer: Any) -> None:
    tools = Tools(SPECS, "auto", parallel=True)
    [gate] = tool_processors(tools, None, tokenizer, len(tokenizer), max_tokens=100)
    scores = torch.randn(1, len(tokenizer))
    assert torch.equal(gate(torch.tensor([[1, 2, 3]]), scores.clone()), scores)
    assert torch.equal(gate(torch.tensor([[1, 2, 3, 50]]), scores.clone()), scores)
    [call] = ids(tokenizer, "<tool_call>")
    for seed in range(6):
        text, _ = decode(tokenizer, tools, seed=seed, force={3: call}, max_tokens=100)
        _content, calls = parse(text, tools)
        assert calls, text
        check_calls(calls, tools)


def test_auto_without_parallel_ends_after_the_call(tokenizer: Any) -> None:
    tools = Tools(SPECS, "auto", parallel=False)
    [call] = ids(tokenizer, "<tool_call>")
    for seed in range(4):
        text, stopped = decode(tokenizer, tools, seed=seed, force={2: call}, max_tokens=100)
        assert stopped
        assert text.endswith("</tool_call>")
        _, calls = parse(text, tools)
        assert len(calls) == 1


def test_none_bans_the_call_token(tokenizer: Any) -> None:
    [processor] = tool_processors(Tools(SPECS, "none"), None, tokenizer, len(tokenizer))
    scores = processor(torch.tensor([[1]]), torch.zeros(1, len(tokenizer)))
    [call] = ids(tokenizer, "<tool_call>")
    assert torch.isinf(scores[0, call])
    assert int(torch.isinf(scores).sum()) == 1


def test_auto_with_response_format_answers_json_or_calls(tokenizer: Any) -> None:
    tools = Tools(SPECS, "auto")
    fmt = ResponseFormat("json_schema", {"type": "object", "properties": {"a": {"type": "string"}}})
    [call] = ids(tokenizer, "<tool_call>")
    for seed in range(6):
        force = {0: call} if seed % 2 else None
        text, stopped = decode(tokenizer, tools, fmt=fmt, seed=seed, force=force, max_tokens=120)
        assert stopped
        content, calls = parse(text, tools)
        if calls:
            assert not content
            check_calls(calls, tools)
        else:
            assert not seed % 2
            assert set(json.loads(content)) <= {"a"}


def test_inside_strings_no_newline_or_call_tokens(tokenizer: Any) -> None:
    tools = Tools((WEATHER,), "function", "get_weather")
    [processor] = tool_processors(tools, None, tokenizer, len(tokenizer))
    prefix = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'
    sequence = [0, *tokenizer(prefix, add_special_tokens=False)["input_ids"]]
    assert sequence[1:2] == ids(tokenizer, "<tool_call>")  # the marker is one token
    banned = ids(tokenizer, "<tool_call>", "</tool_call>", "Ċ")
    for k in range(1, len(sequence) + 1):
        scores = processor(torch.tensor([sequence[:k]]), torch.zeros(1, len(tokenizer)))
        if k == 1:
            assert scores[0, banned[0]] == 0  # the wrapper's own tokens are allowed
    assert torch.isinf(scores[0, banned]).all()
    assert (scores[0] > -torch.inf).sum() > 100


def test_grammars_are_cached(tokenizer: Any) -> None:
    tools = Tools(SPECS, "required")
    first = compile_tools(tools, None, tokenizer, 2001)
    assert compile_tools(Tools(SPECS, "required"), None, tokenizer, 2001) is first
    single = Tools(SPECS, "required", parallel=False)
    assert compile_tools(single, None, tokenizer, 2001) is not first


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "not a valid JSON schema"),
        ({"type": "string"}, "must be a JSON schema of an object"),
        ({"type": "object", "properties": {"a": {"$ref": "http://x/y"}}}, "must be local"),
        (nested(70), "nested deeper"),
        ({"properties": {"p": {"type": "string", "pattern": "b{20000}"}}}, "repeats too much"),
        ({"enum": [{"x": "y" * 100}] * 700}, "larger than"),
    ],
)
def test_invalid_parameters_name_the_tool(tokenizer: Any, parameters: Any, message: str) -> None:
    spec = ToolSpec("lookup", parameters=parameters)
    with pytest.raises(InvalidTools, match=message) as info:
        tool_processors(Tools((CLOCK, spec), "required"), None, tokenizer, len(tokenizer))
    assert "'lookup'" in str(info.value) or "larger than" in str(info.value)
    assert "Error" not in str(info.value)
    assert ".cc" not in str(info.value)


def test_other_refusals(tokenizer: Any) -> None:
    with pytest.raises(InvalidTools, match="no function may be called"):
        tool_processors(Tools(SPECS, "function", "missing"), None, tokenizer, len(tokenizer))
    fmt = ResponseFormat("json_schema", {"type": "string", "pattern": "(unclosed"})
    with pytest.raises(InvalidResponseFormat):
        tool_processors(Tools(SPECS, "auto"), fmt, tokenizer, len(tokenizer))
    # Under required the tools win: response_format is not compiled at all.
    tool_processors(Tools(SPECS, "required"), fmt, tokenizer, len(tokenizer))
