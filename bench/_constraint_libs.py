"""Parts shared by ``constraints_bench.py``: the benchmark schemas, the timing summary, and part 3,
the per-step mask computation of other constrained-decoding libraries (xgrammar, and llguidance
and outlines-core when importable) on the same schemas."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import xgrammar as xgr

__all__ = ("SCHEMAS", "bench_libraries", "summary")

SCHEMAS: dict[str, dict[str, Any] | None] = {
    "json_object": None,
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
        },
        "required": ["name", "age", "tags"],
    },
    "invoice": {
        "type": "object",
        "properties": {
            "vendor": {"type": "string"},
            "currency": {"enum": ["USD", "EUR", "CNY"]},
            "total": {"type": "number"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                        "qty": {"type": "integer", "minimum": 1},
                        "price": {"type": "number"},
                    },
                    "required": ["sku", "qty", "price"],
                },
            },
        },
        "required": ["vendor", "currency", "total", "items"],
    },
}


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "mean_ms": statistics.fmean(ms),
        "p50_ms": ms[len(ms) // 2],
        "p95_ms": ms[min(len(ms) - 1, int(len(ms) * 0.95))],
        "n": len(ms),
    }


def bench_libraries(tokenizer: Any, vocab: int, steps: int) -> dict[str, Any]:
    """Per-step mask computation + token acceptance of each library, same random-logit policy."""
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    libs: dict[str, Callable[[dict[str, Any]], tuple[float, Any, Any]]] = {}

    def xgrammar_lib(schema: dict[str, Any]) -> tuple[float, Any, Any]:
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        start = time.perf_counter()
        grammar = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        compiled = time.perf_counter() - start
        matcher = xgr.GrammarMatcher(grammar)
        return compiled, (lambda m: matcher.fill_next_token_bitmask(m, 0)), matcher.accept_token

    libs["xgrammar"] = xgrammar_lib
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=stops[0])

        def llguidance_lib(schema: dict[str, Any]) -> tuple[float, Any, Any]:
            start = time.perf_counter()
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": False}
            )
            matcher = llguidance.LLMatcher(lltok, grammar)
            compiled = time.perf_counter() - start
            return (
                compiled,
                lambda m: llguidance.torch.fill_next_token_bitmask(matcher, m, 0),
                matcher.consume_token,
            )

        libs["llguidance"] = llguidance_lib
    except ImportError as exc:
        print(f"llguidance not importable ({exc.name}); skipped")
    try:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema
        from outlines_core.kernels.torch import fill_next_token_bitmask as oc_fill

        mapping: dict[bytes, list[int]] = {}
        for i, token in enumerate(info.decoded_vocab):
            if token and i not in stops and i not in set(info.special_token_ids):
                mapping.setdefault(token, []).append(i)
        oc_vocab = outlines_core.Vocabulary(stops[0], mapping)

        def outlines_lib(schema: dict[str, Any]) -> tuple[float, Any, Any]:
            start = time.perf_counter()
            regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern=" ?")
            guide = outlines_core.Guide(outlines_core.Index(regex, oc_vocab))
            compiled = time.perf_counter() - start
            return compiled, (lambda m: oc_fill(guide, m)), guide.advance

        libs["outlines-core"] = outlines_lib
    except ImportError as exc:
        print(f"outlines-core not importable ({exc.name}); skipped")

    out: dict[str, Any] = {}
    for lib, make in libs.items():
        for name, schema in SCHEMAS.items():
            schema = schema or {"type": "object"}
            try:
                compiled, fill, accept = make(schema)
            except Exception as exc:  # a library that cannot compile a schema is a finding
                out[f"{lib}/{name}"] = {"error": type(exc).__name__}
                continue
            gen = torch.Generator().manual_seed(0)
            mask = xgr.allocate_token_bitmask(1, vocab)
            times = []
            for _ in range(steps):
                logits = torch.randn(1, vocab, generator=gen)
                start = time.perf_counter()
                fill(mask)
                times.append(time.perf_counter() - start)
                xgr.apply_token_bitmask_inplace(logits, mask)
                token = int(logits.argmax())
                if token in stops:
                    break
                try:
                    if accept(token) is False:
                        break
                except Exception:
                    break  # outlines-core raises at the end of its regex
            out[f"{lib}/{name}"] = {"compile_s": compiled, **summary(times)}
    return out
