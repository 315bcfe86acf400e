"""Function calling enforced during decoding: Qwen's Hermes call blocks, compiled by xgrammar.

The chat template teaches the model to call a function by writing
``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`` (``<tool_call>`` and
``</tool_call>`` are single added tokens). Policy, by ``Tools.choice``:

- ``required`` / ``function``: the whole answer is one call of a callable function (one or more,
  one per line, when ``parallel``), then the end of turn. The grammar is an xgrammar structural
  tag: ``TagsWithSeparatorFormat`` over one ``TagFormat`` per function, its begin the wrapper text
  up to the arguments (the name a JSON literal), its content the function's ``parameters`` compiled
  as ``response_format`` schemas are (no optional whitespace; strict: no undeclared properties;
  no ``parameters``: any object), embedded as EBNF, its end ``}\\n</tool_call>``.
- ``auto``: text is not constrained at all (it is what it would be without tools) until the model
  samples the ``<tool_call>`` token; from there the same grammar (one call) holds until the call is
  complete, then text is free again (``parallel``) or only the end of turn may follow. A call
  spelled without that token is not constrained; the output parser (``adapters.local.toolcalls``)
  returns it as text unless it is a well-formed call.
- ``none``: the ``<tool_call>`` token is banned; the tools are still described in the prompt.
- With ``response_format``: under ``none`` the format applies; under ``required``/``function`` the
  tools win (the answer is calls, there is no text to format); under ``auto`` the answer is either
  JSON valid against the format or the call(s).
- Closing mode (``adapters.local.constraints``) keeps calls inside ``max_tokens``; its reserve
  adds the wrapper's tokens. A call cut by ``max_tokens`` anyway (a budget below the shortest
  call, or a call started under ``auto`` near the end) comes back as text.
- ``parameters`` are enforced whatever ``ToolSpec.strict`` says (a valid call is always better).
  Each must describe an object and gets ``response_format``'s limits (``check_schema``); all of
  them together at most ``MAX_SCHEMA_BYTES``. Failures raise ``InvalidTools`` naming the
  function. Grammars share ``response_format``'s cache.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch
import transformers
import xgrammar as xgr
from xgrammar import structural_tag as st

from adapters.base import (
    AdapterError,
    InvalidResponseFormat,
    InvalidTools,
    ResponseFormat,
    Tools,
    ToolSpec,
)
from adapters.local.constraints import (
    MAX_SCHEMA_BYTES,
    cached_grammar,
    canonical,
    check_schema,
    compiler_for,
    format_schema,
    logits_processor_for,
    skeleton,
)
from adapters.local.grammar import GrammarLogitsProcessor, VocabFacts
from adapters.local.toolcalls import CALL_CLOSE, CALL_OPEN

__all__ = (
    "BanTokens",
    "ToolCallGate",
    "call_begin",
    "compile_tools",
    "tool_processors",
)

_CALL_END = "}\n" + CALL_CLOSE
_ANY_OBJECT = '{"type":"object"}'
_INVALID = "is not a valid JSON schema or uses unsupported features"

_lock = threading.Lock()


def call_begin(name: str) -> str:
    """A call's text up to its arguments object."""
    return f'{CALL_OPEN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


def tool_processors(
    tools: Tools,
    fmt: ResponseFormat | None,
    tokenizer: Any,
    vocab_size: int,
    *,
    max_tokens: int | None = None,
) -> tuple[transformers.LogitsProcessor, ...]:
    """Fresh logits processors enforcing ``tools`` (and ``fmt``) for one sequence; raises
    ``InvalidTools`` (or ``InvalidResponseFormat``) when they cannot be compiled."""
    markers = _markers(tokenizer)
    if tools.choice == "none":
        if fmt is not None:  # its vocab facts ban <tool_call> already
            return (logits_processor_for(fmt, tokenizer, vocab_size, max_tokens=max_tokens),)
        return (BanTokens([tokenizer.convert_tokens_to_ids(CALL_OPEN)]),)
    entry = compiler_for(tokenizer, vocab_size)
    with _lock:
        vocab = entry.structural.get(markers)
        if vocab is None:
            vocab = entry.structural[markers] = VocabFacts(entry.info, entry.banned, markers)
    fmt = fmt if tools.choice == "auto" else None  # under required the answer is calls only
    auto = tools.choice == "auto" and fmt is None  # one call at a time, behind a gate
    grammar = _compile(tools.callable, fmt, entry, parallel=tools.parallel and not auto)
    # Closing reserve: the wrapper's tokens and one per character of the arguments' skeleton
    # (as for response_format).
    sizes = [
        len(tokenizer.encode(call_begin(s.name) + _CALL_END, add_special_tokens=False))
        + skeleton(s.parameters or {"type": "object"})
        for s in tools.callable
    ]
    if fmt is not None:
        sizes.append(skeleton(json.loads(format_schema(fmt)[0])))
    reserve = 8 + max(sizes)
    if auto:
        trigger = tokenizer.convert_tokens_to_ids(CALL_OPEN)
        gate = ToolCallGate(grammar, vocab, trigger, max_tokens=max_tokens, reserve=reserve)
        gate.parallel = tools.parallel
        return (gate,)
    return (GrammarLogitsProcessor(grammar, vocab, max_tokens=max_tokens, reserve=reserve),)


def compile_tools(
    tools: Tools, fmt: ResponseFormat | None, tokenizer: Any, vocab_size: int
) -> xgr.CompiledGrammar:
    """The grammar of ``tools.callable``'s calls (or JSON valid against ``fmt``), cached."""
    entry = compiler_for(tokenizer, vocab_size)
    return _compile(tools.callable, fmt, entry, parallel=tools.parallel)


def _compile(
    specs: Sequence[ToolSpec], fmt: ResponseFormat | None, entry: Any, *, parallel: bool
) -> xgr.CompiledGrammar:
    if not specs:
        raise InvalidTools("no function may be called: none in tools matches tool_choice")
    params = [(spec.name, *_parameters(spec)) for spec in specs]
    if sum(len(text.encode()) for _, text, _ in params) > MAX_SCHEMA_BYTES:
        raise InvalidTools(f"the tools' parameters are larger than {MAX_SCHEMA_BYTES} bytes")
    answer = format_schema(fmt) if fmt is not None else None

    def build() -> xgr.CompiledGrammar:
        tags = [
            st.TagFormat(
                begin=call_begin(name),
                content=_json(text, strict, InvalidTools(f"tool {name!r} parameters {_INVALID}")),
                end=_CALL_END,
            )
            for name, text, strict in params
        ]
        calls: st.Format = st.TagsWithSeparatorFormat(
            tags=tags, separator="\n", at_least_one=True, stop_after_first=not parallel
        )
        if answer is not None:
            invalid = InvalidResponseFormat(f"response_format schema {_INVALID}")
            calls = st.OrFormat(elements=[_json(*answer, invalid), calls])
        try:
            return entry.compiler.compile_structural_tag(st.StructuralTag(format=calls))
        except Exception as exc:  # xgrammar's messages hold C++ paths
            raise InvalidTools("the tools could not be compiled into a grammar") from exc

    key = json.dumps(["tools", parallel, answer, params])
    return cached_grammar(entry, key, build)


def _parameters(spec: ToolSpec) -> tuple[str, bool]:
    """A function's arguments schema as compact JSON, checked, and whether it is strict."""
    subject = f"tool {spec.name!r} parameters"
    schema = spec.parameters
    if schema is None:
        return _ANY_OBJECT, False
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidTools(f"{subject} must be a JSON schema of an object")
    check_schema(schema, subject, InvalidTools)
    return canonical({"type": "object", **schema}, InvalidTools(f"{subject} {_INVALID}")), True


def _json(text: str, strict: bool, invalid: AdapterError) -> st.GrammarFormat:
    """A schema's grammar (as ``response_format``'s) as EBNF, for a structural tag."""
    try:
        grammar = xgr.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=strict)
    except Exception as exc:  # RuntimeError/ValueError with C++ paths
        raise invalid from exc
    return st.GrammarFormat(grammar=str(grammar))


def _markers(tokenizer: Any) -> frozenset[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (CALL_OPEN, CALL_CLOSE)]
    if any(not isinstance(i, int) or i == tokenizer.unk_token_id for i in ids):
        raise InvalidTools("This model's tokenizer has no tool-call tokens.")
    return frozenset(ids)


class BanTokens(transformers.LogitsProcessor):
    """Never allows ``ids`` (``tool_choice`` ``none``: no ``<tool_call>``)."""

    def __init__(self, ids: Any) -> None:
        self.ids = sorted(ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.ids] = -torch.inf
        return scores


class ToolCallGate(transformers.LogitsProcessor):
    """``auto``: no constraint until ``trigger`` (``<tool_call>``) is sampled, then ``grammar``
    (one call, by a ``GrammarLogitsProcessor`` with the budget left) until the call is complete;
    then free text again when ``parallel``, else only the end of turn. One sequence only."""

    def __init__(
        self,
        grammar: xgr.CompiledGrammar,
        vocab: VocabFacts,
        trigger: int,
        *,
        max_tokens: int | None,
        reserve: int,
    ) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.trigger = trigger
        self.max_tokens = max_tokens
        self.reserve = reserve
        self.parallel = True
        """Free text (and further calls) may follow a call; else only the end of turn."""
        self.call: GrammarLogitsProcessor | None = None
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise RuntimeError("a ToolCallGate serves one sequence")
        length = int(input_ids.shape[1])
        if self.prompt_length is None:
            self.prompt_length = length
        if self.call is None:
            if length == self.prompt_length or int(input_ids[0, -1]) != self.trigger:
                return scores
            left = self.max_tokens
            if left is not None:
                left -= length - 1 - self.prompt_length
            self.call = GrammarLogitsProcessor(
                self.grammar, self.vocab, max_tokens=left, reserve=self.reserve
            )
            # Start the grammar before the trigger, so the trigger is its first token.
            self.call(input_ids[:, :-1], torch.zeros_like(scores))  # type: ignore[arg-type]
        free = scores.clone() if self.parallel else scores
        scores = self.call(input_ids, scores)
        if self.parallel and self.call.matchers[0].is_completed():
            self.call = None  # the call is complete: text or another call may follow
            return free  # type: ignore[return-value]
        return scores
