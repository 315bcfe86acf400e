"""Cost of grammar-constrained ``response_format`` decoding, per token, on a Qwen3-VL vocabulary.

Usage (from the repository root)::

    .venv/bin/python bench/constraints_bench.py --model /tmp/vlm-2b [--steps 200] [--e2e 32]
    PYTHONPATH=/tmp/benchpkgs .venv/bin/python bench/constraints_bench.py ...   # + other libraries

``--model`` is a checkpoint directory (``adapters.testing.models.build_test_model(dir, "2b")``
writes one with the real Qwen3-VL-2B dimensions and 151,669-token vocabulary; ``--build`` does
that into ``--model`` first). Parts:

1. compile: tokenizer preparation and grammar compilation per schema, cold and cached.
2. mask: ``GrammarLogitsProcessor`` per call on random logits of the model's vocabulary size,
   following the grammar (argmax of random logits), with and without closing mode.
3. libraries: per-step mask computation of xgrammar, llguidance and outlines-core on the same
   schemas, when importable (install them anywhere on ``PYTHONPATH``; they are not dependencies).
4. e2e (``--e2e N``): ``model.generate`` of N greedy tokens with and without the processor.

Prints the figures as JSON and, with ``--json PATH``, writes them.

Recorded 2026-11-24 on the 2-core development VM (x86_64, torch 2.14.1, xgrammar 0.2.8), model
built by ``build_test_model(dir, "2b")`` (vocab 151,936, bf16), ``--steps 200 --e2e 16``:

- tokenizer preparation (TokenizerInfo + vocab masks), once per tokenizer: 1.2-1.8 s; schema
  compile (xgrammar, uncached) 16-18 ms; cached lookup 0.05-1.5 ms.
- ``GrammarLogitsProcessor`` per token, quiet machine (load 0.65): 0.15-0.16 ms mean, p95
  0.20-0.21 ms; in closing mode (last tokens only) 0.18-0.69 ms mean, p95 up to 1.1 ms. The same
  run with other jobs on both cores (load 2.0): 3.6-4.7 ms mean, p95 15 ms.
- mask computation per step, 151,936 tokens: xgrammar 0.019-0.021 ms; llguidance 1.9.1
  0.015-0.022 ms (grammar build 1 ms); outlines-core 0.2.14 0.26 ms (index build 0.17 s for
  the person schema, 0.44 s invoice, 8.8 s for json_object).
- end to end, 16 greedy tokens, 3 interleaved rounds (load 2.0-2.5): plain 4.10 tok/s, with
  the invoice schema 4.00 tok/s (median); the processor took 1.0 ms of each ~245 ms token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import ResponseFormat
from adapters.local.constraints import compile_grammar, logits_processor_for
from bench._constraint_libs import SCHEMAS, bench_libraries, summary


def fmt_for(name: str) -> ResponseFormat:
    schema = SCHEMAS[name]
    return (
        ResponseFormat("json_object") if schema is None else ResponseFormat("json_schema", schema)
    )


def bench_compile(tokenizer: Any, vocab: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start = time.perf_counter()
    compile_grammar(fmt_for("json_object"), tokenizer, vocab)  # includes tokenizer preparation
    out["first_call_with_tokenizer_s"] = time.perf_counter() - start
    for name in SCHEMAS:
        fmt = fmt_for(name)
        start = time.perf_counter()
        compile_grammar(fmt, tokenizer, vocab)
        cached = time.perf_counter() - start
        out[name] = {"cached_s": cached}
    return out


def bench_mask(tokenizer: Any, vocab: int, steps: int, closing: bool) -> dict[str, Any]:
    """Processor calls along a grammar-following path of argmax-of-random-logits tokens."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    stops = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    for name in SCHEMAS:
        processor = logits_processor_for(
            fmt_for(name), tokenizer, vocab, max_tokens=steps if closing else None
        )
        ids = torch.tensor([[tokenizer.convert_tokens_to_ids("<|im_start|>")] * 8])
        times = []
        for _ in range(steps):
            logits = torch.randn(1, vocab, generator=gen)
            start = time.perf_counter()
            logits = processor(ids, logits)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
            token = int(logits.argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token in stops:
                break
        out[name] = {**summary(times), "finished": token in stops}
    return out


def bench_e2e(model_dir: Path, tokens: int, rounds: int) -> dict[str, Any]:
    """Greedy text-only decode, plain and constrained, interleaved ``rounds`` times (medians).

    Interleaving matters on a shared machine: load from other processes moves both arms alike.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto").eval()
    vocab = int(model.config.get_text_config().vocab_size)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Reply in JSON."}]}]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    runs: dict[str, list[float]] = {"plain": [], "json_schema:invoice": []}
    processor_ms: list[float] = []
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)  # warm up
        for _ in range(rounds):
            for label in runs:
                extra = []
                if label != "plain":
                    extra = [logits_processor_for(fmt_for("invoice"), processor.tokenizer, vocab)]
                start = time.perf_counter()
                result = model.generate(
                    **inputs, logits_processor=extra, max_new_tokens=tokens, do_sample=False
                )
                elapsed = time.perf_counter() - start
                made = int(result.shape[1] - inputs["input_ids"].shape[1])
                runs[label].append(made / elapsed)
                if extra:
                    processor_ms.append(extra[0].seconds / max(1, extra[0].steps) * 1000)
    out: dict[str, Any] = {"dtype": str(model.dtype), "tokens": tokens, "rounds": rounds}
    for label, rates in runs.items():
        out[label] = {"tok_per_s_median": statistics.median(rates), "tok_per_s_runs": rates}
    out["processor_ms_per_token_median"] = statistics.median(processor_ms)
    return out


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/vlm-2b"))
    parser.add_argument("--build", action="store_true", help="build the 2b test model first")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--e2e", type=int, default=0, help="tokens per end-to-end generate")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved e2e repetitions")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.build:
        from adapters.testing.models import build_test_model

        build_test_model(args.model, "2b")
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = int(AutoConfig.from_pretrained(args.model).get_text_config().vocab_size)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} cpus={os.cpu_count()} threads={torch.get_num_threads()} "
        f"load_average_at_start={os.getloadavg()[0]:.2f}",
        "vocab_size": vocab,
        "versions": {"torch": torch.__version__, "xgrammar": _version("xgrammar")},
    }
    results["compile"] = bench_compile(tokenizer, vocab)
    results["mask"] = bench_mask(tokenizer, vocab, args.steps, closing=False)
    results["mask_closing"] = bench_mask(tokenizer, vocab, args.steps, closing=True)
    results["libraries"] = bench_libraries(tokenizer, vocab, args.steps)
    if args.e2e:
        results["e2e"] = bench_e2e(args.model, args.e2e, args.rounds)
    results["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
