"""``response_format`` enforced during decoding: a grammar-constrained logits processor.

Policy:

- ``json_object``: any JSON object; ``json_schema``: JSON valid against the schema. Both are
  compiled by xgrammar (``bench/constraints_bench.py``: its mask costs 0.02 ms per step on the
  152k Qwen vocabulary, like llguidance; outlines-core is over 10x slower per step and builds
  its index in 0.2-9 s) into a token mask applied before sampling, so the output parses and
  validates whatever the weights are, provided generation ends on a stop token rather than
  ``max_tokens`` (a truncated answer is truncated JSON, as with OpenAI's ``finish_reason=length``).
- No optional whitespace (``any_whitespace=False``): a random or weak model otherwise fills the
  answer with whitespace until ``max_tokens`` and the JSON never closes. Properties a schema does
  not declare are not generated (xgrammar strict mode), which keeps every output valid and short.
- Never allowed: tokens holding a raw control byte (U+0000-U+001F; compact JSON has none, and
  xgrammar 0.2.8 lets them into strings with ``minLength``/``maxLength`` or ``pattern``), and
  the tokenizer's added tokens other than the stop tokens (xgrammar takes ``<|im_start|>``,
  ``<|image_pad|>`` or ``<think>`` for literal text inside strings).
- Closing mode: given ``max_tokens``, once the tokens left fall to a reserve (one token per
  character of the schema's required skeleton, plus two per open bracket), the processor
  narrows the tokens the grammar allows to those that finish soonest: inside a string, the
  closing quote (with only ``]``/``}`` after it, else anything after it); outside, the end of
  turn where the grammar allows it (after a complete tool call), else tokens of ``]``/``}``
  only, else of ``"``, ``,``, ``:`` and space, else any punctuation, else (text the grammar
  forces, such as a key) the longest allowed tokens. Each narrowing applies only where
  it leaves a token. A model that would ramble (a random one writes strings forever) then
  closes valid JSON inside the budget; one that is finishing anyway is unaffected. A budget
  below the schema's shortest instance still ends in ``finish_reason=length``.
- Compiled grammars are cached per tokenizer (by identity) and schema (compact JSON, key order
  kept: properties are generated in schema order, as OpenAI does), bounded by count. One
  processor instance serves one ``generate()`` call (matchers are stateful).
- A schema that cannot be compiled raises ``InvalidResponseFormat`` with a message of ours;
  ``$ref`` must be local (``#/...``): nothing is ever fetched.
- Compilation is bounded before it starts (schema size, nesting, ``pattern`` length and counted
  repetitions) and in time (``adapters.local.decoding.COMPILE_TIMEOUT_S``), and the gateway runs
  it before the request takes a generation slot (``Adapter.check``). Tool parameter schemas
  (``adapters.local.toolgrammar``) get the same limits and share the cache.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import xgrammar as xgr

from adapters.base import AdapterError, InvalidResponseFormat, ResponseFormat
from adapters.local.grammar import GrammarLogitsProcessor, VocabFacts

__all__ = (
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_REPEATS",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "GrammarLogitsProcessor",
    "cached_grammar",
    "canonical",
    "check_schema",
    "compile_grammar",
    "compiler_for",
    "format_schema",
    "logits_processor_for",
    "skeleton",
    "validate_output",
)

MAX_SCHEMA_BYTES = 65536
"""Largest schema accepted, as compact JSON (compilation time grows with schema size)."""
MAX_SCHEMA_DEPTH = 64
"""Deepest nesting of a schema's JSON accepted (objects and arrays, each counts one)."""
MAX_PATTERN_LENGTH = 512
"""Longest ``pattern`` regex accepted, in characters."""
MAX_PATTERN_REPEATS = 1024
"""Largest product of a pattern's counted repetitions (``{n}``, ``{n,m}``, ``{n,}``): xgrammar
unrolls them, and compile time grows with the square (``b{5000}``: 2.5 s; ``b{20000}``: 31 s on
the real vocabulary; ``b{1024}`` about 0.1 s)."""

_CACHE_ENTRIES = 128
"""Compiled grammars kept per tokenizer."""
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
_INVALID = (
    "response_format.json_schema.schema is not a valid JSON schema or uses unsupported features"
)

_lock = threading.Lock()


# Keyed by the tokenizer object itself: entries go away with it, so an id is never reused.
_compilers: weakref.WeakKeyDictionary[Any, dict[int, _Compiler]] = weakref.WeakKeyDictionary()


class _Compiler:
    """One tokenizer's grammar compiler, vocab facts and compiled grammars (LRU order)."""

    def __init__(self, info: xgr.TokenizerInfo, banned: set[int]) -> None:
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.info = info
        self.banned = banned
        self.vocab = VocabFacts(info, banned)
        self.grammars: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self.structural: dict[frozenset[int], VocabFacts] = {}
        """Vocab facts allowing tool-call structure (``adapters.local.toolgrammar`` fills it)."""


def logits_processor_for(
    fmt: ResponseFormat, tokenizer: Any, vocab_size: int, *, max_tokens: int | None = None
) -> GrammarLogitsProcessor:
    """A fresh processor enforcing ``fmt`` for a model with ``vocab_size`` logits.

    Pass ``max_tokens`` (the request's completion budget) to have the JSON closed before the
    budget runs out. Raises ``InvalidResponseFormat`` when the schema is missing, too large or
    not compilable.
    """
    grammar = compile_grammar(fmt, tokenizer, vocab_size)
    entry = compiler_for(tokenizer, vocab_size)
    schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "object"}
    # One token per character of the skeleton: small vocabularies split keys into pieces.
    reserve = 8 + skeleton(schema)
    return GrammarLogitsProcessor(grammar, entry.vocab, max_tokens=max_tokens, reserve=reserve)


def compile_grammar(fmt: ResponseFormat, tokenizer: Any, vocab_size: int) -> xgr.CompiledGrammar:
    """The compiled grammar for ``fmt`` (cached per tokenizer identity, vocab size and schema)."""
    text, strict = format_schema(fmt)
    entry = compiler_for(tokenizer, vocab_size)

    def build() -> xgr.CompiledGrammar:
        try:
            return entry.compiler.compile_json_schema(
                text, any_whitespace=False, strict_mode=strict
            )
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with C++ file paths
            raise InvalidResponseFormat(_INVALID) from exc

    return cached_grammar(entry, f"{strict}:{text}", build)


def format_schema(fmt: ResponseFormat) -> tuple[str, bool]:
    """``fmt``'s schema, checked and bounded, as compact JSON, and whether it is strict."""
    if fmt.type == "json_object":
        schema: dict[str, Any] = {"type": "object"}
        strict = False  # any properties, any values: that is what json_object promises
    elif fmt.type == "json_schema":
        if not isinstance(fmt.schema, dict):
            raise InvalidResponseFormat("response_format.json_schema.schema must be an object")
        schema, strict = fmt.schema, True
        check_schema(schema)
    else:
        raise InvalidResponseFormat(f"response_format type {fmt.type!r} is not supported")
    text = canonical(schema, InvalidResponseFormat(_INVALID))
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidResponseFormat(
            f"response_format schema is larger than {MAX_SCHEMA_BYTES} bytes"
        )
    return text, strict


def cached_grammar(
    entry: _Compiler, key: str, build: Callable[[], xgr.CompiledGrammar]
) -> xgr.CompiledGrammar:
    """``entry``'s grammar for ``key``, compiled by ``build`` (outside the lock) on a miss."""
    with _lock:
        if key in entry.grammars:
            entry.grammars.move_to_end(key)
            return entry.grammars[key]
    grammar = build()
    with _lock:
        entry.grammars[key] = grammar
        while len(entry.grammars) > _CACHE_ENTRIES:
            entry.grammars.popitem(last=False)
    return grammar


def validate_output(text: str, fmt: ResponseFormat) -> Any:
    """Parse ``text`` and check it against ``fmt``; return the value or raise ``ValueError``.

    Used by tests and benchmarks; needs ``jsonschema`` (the ``test`` extra).
    """
    import jsonschema

    value = json.loads(text)
    if fmt.type == "json_object" and not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if fmt.type == "json_schema":
        try:
            jsonschema.validate(value, fmt.schema or {})
        except jsonschema.ValidationError as exc:
            raise ValueError(exc.message) from exc
    return value


def skeleton(schema: Any) -> int:
    """Characters of a short JSON valid against ``schema``, with one item in every array (one
    may be open when closing starts): a rough estimate of what closing still has to write."""
    return _skeleton(schema, schema, 0)


def _skeleton(schema: Any, root: Any, depth: int) -> int:
    if depth > 8 or not isinstance(schema, dict):
        return 4
    if isinstance(schema.get("$ref"), str):
        target: Any = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            target = target.get(part, {}) if part and isinstance(target, dict) else target
        return _skeleton(target, root, depth + 1)
    if "const" in schema:
        return len(json.dumps(schema["const"]))
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return min(len(json.dumps(v)) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return min(_skeleton(s, root, depth + 1) for s in schema[key])
    kinds = schema.get("type", "object" if "properties" in schema else "number")
    kind = kinds if isinstance(kinds, str) else (kinds or ["number"])[0]
    if kind == "object":
        props = schema.get("properties", {}) if isinstance(schema.get("properties"), dict) else {}
        required = [k for k in schema.get("required", []) if isinstance(k, str)]
        return 2 + sum(len(k) + 6 + _skeleton(props.get(k), root, depth + 1) for k in required)
    if kind == "array":
        count = max(1, min(int(schema.get("minItems", 0) or 0), 1000))
        return 2 + count * (2 + _skeleton(schema.get("items"), root, depth + 1))
    if kind == "string":
        return 2 + min(int(schema.get("minLength", 0) or 0), 10000) + len(schema.get("pattern", ""))
    return {"boolean": 4, "null": 4}.get(kind, 1 + len(str(schema.get("minimum", ""))))


def canonical(schema: Any, invalid: AdapterError) -> str:
    """``schema`` as compact JSON (key order kept: it is the order properties are generated in);
    raises ``invalid`` when it is not JSON (NaN, non-string keys)."""
    try:
        return json.dumps(schema, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise invalid from exc


def compiler_for(tokenizer: Any, vocab_size: int) -> _Compiler:
    """The grammar compiler, vocab facts and grammar cache of ``tokenizer`` at ``vocab_size``."""
    with _lock:
        per_vocab = _compilers.setdefault(tokenizer, {})
        if vocab_size not in per_vocab:
            stops = {tokenizer.convert_tokens_to_ids(t) for t in _STOP_TOKENS}
            stops.add(tokenizer.eos_token_id)
            stops = {t for t in stops if isinstance(t, int) and t != tokenizer.unk_token_id}
            info = xgr.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stops)
            )
            added = set(getattr(tokenizer, "added_tokens_decoder", {})) - stops
            per_vocab[vocab_size] = _Compiler(info, added)
        return per_vocab[vocab_size]


def check_schema(
    schema: Any,
    subject: str = "response_format schema",
    error: type[AdapterError] = InvalidResponseFormat,
) -> None:
    """Bound nesting and patterns, refuse non-local ``$ref`` (xgrammar would silently ignore
    them); raises ``error`` with a message about ``subject``."""
    _check_schema(schema, subject, error, 0)


def _check_schema(schema: Any, subject: str, error: type[AdapterError], depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise error(f"{subject} is nested deeper than {MAX_SCHEMA_DEPTH}")
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            _check_pattern(pattern, subject, error)
        ref = schema.get("$ref")
        if ref is not None and not (isinstance(ref, str) and (ref == "#" or ref.startswith("#/"))):
            raise error(f"{subject} $ref must be local ('#/...')")
        for value in schema.values():
            _check_schema(value, subject, error, depth + 1)
    elif isinstance(schema, list):
        for value in schema:
            _check_schema(value, subject, error, depth + 1)


_COUNTED = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


def _check_pattern(pattern: str, subject: str, error: type[AdapterError]) -> None:
    """Bound a ``pattern``'s length and counted repetitions (each ``{n,m}`` multiplies the
    states xgrammar builds, nested or in sequence: the product is a safe over-estimate)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise error(f"{subject} pattern is longer than {MAX_PATTERN_LENGTH} characters")
    product = 1
    for low, high in _COUNTED.findall(pattern):
        product *= max(int(low), int(high or 0), 1)
        if product > MAX_PATTERN_REPEATS:
            raise error(
                f"{subject} pattern repeats too much (counted repetitions multiply to more "
                f"than {MAX_PATTERN_REPEATS})"
            )
