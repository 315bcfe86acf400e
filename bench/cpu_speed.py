"""CPU speed study: vision-encode time, prefill time and decode tokens/s of the 2b-dimension
Qwen3-VL under threads, dtype, attention implementation, int8 weight quantization and
torch.compile. Results: ``bench/results/cpu_speed.{md,json}``.

Usage (repository root)::

    .venv/bin/python bench/cpu_speed.py --model /tmp/vlm-2b                 # every variant
    .venv/bin/python bench/cpu_speed.py --model /tmp/vlm-2b --variants base fp32 --reps 3

Each variant runs in its own process (a clean allocator and thread pool, a hard time bound,
and a crash in one variant does not end the study). Measured, best of ``--reps`` runs (other
jobs on shared cores only ever slow a run down; medians are in the JSON) after one unmeasured
warm-up run of each part:

- vision encode: ``model.model.get_image_features`` on one 1024x768 image (768 visual tokens,
  3072 patches), the processor's own preprocessing excluded;
- prefill: one forward pass over an ~800-token text prompt with a fresh cache (the size of a
  one-image request's prompt);
- decode: tokens/s after the first token of one ``generate`` of ``--decode-tokens`` + 1 tokens
  from a short prompt (``min_new_tokens`` forces the length), timed per token by a streamer.

Variants (``--variants``): base (bf16, sdpa, all cores), threads1, fp32, eager,
int8_dynamic (torch.ao dynamic int8 Linear, needs float32), int8_weight_only (torchao
``Int8WeightOnlyConfig`` on bf16; needs the ``torchao`` package), compile (``torch.compile`` of
the vision encoder and of the decoder step with a static cache; bounded by ``--timeout``),
int8_dynamic_lm (vision encoder bf16; language model float32 with dynamic int8 Linear layers,
per-channel weight scales). ``--merge`` adds a run's variants to the existing results file.
The first greedy tokens of every variant are compared with base's; on random weights the
logits are nearly flat, so a mismatch says little about quality on a trained model.

The server's CPU speed modes (``[model] prepack``, ``quantize``, ``quantize_vision``,
``compile``) are the ``mode_*`` variants, one per ``bench/_modes.py`` ``ENGINE_MODES`` entry
(float32 on the CPU): loaded by the server's own loading code and driven through the engine's own
calls, they report the vision encoder's seconds for the 1024x768 image, prefill tokens/s over
the same text prompt, decode tokens/s at batch 1 and at ``--batch`` (the engine's batched step
over left-padded rows of different lengths; tokens/s counts every row's token) and peak memory,
in a second table. Their greedy tokens are compared with ``mode_fp32``'s (batch 1)::

    .venv/bin/python bench/cpu_speed.py --model /tmp/vlm-2b --out bench/results/cpu_speed_modes \
        --variants mode_fp32 mode_prepack mode_int8 mode_int8_vision mode_int8_head \
        mode_int8_all mode_compile mode_compile_int8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    machine_info,
    synthetic_image,
    write_results,
)
from bench._cpu_report import render
from bench._load import MARK, run_child
from bench._modes import ENGINE_MODES, decode_steps, encode, load_engine, prefill

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"dtype": "bfloat16", "attn": "sdpa", "threads": 0},
    "threads1": {"dtype": "bfloat16", "attn": "sdpa", "threads": 1},
    "fp32": {"dtype": "float32", "attn": "sdpa", "threads": 0},
    "eager": {"dtype": "bfloat16", "attn": "eager", "threads": 0},
    "int8_dynamic": {"dtype": "float32", "attn": "sdpa", "threads": 0, "quant": "dynamic"},
    "int8_weight_only": {"dtype": "bfloat16", "attn": "sdpa", "threads": 0, "quant": "torchao"},
    "compile": {"dtype": "bfloat16", "attn": "sdpa", "threads": 0, "compile": True},
    # The vision encoder stays bf16 (compute-bound: AMX); only the language model, whose decode
    # is bound by reading weights, becomes float32 + dynamic int8 with per-channel scales.
    "int8_dynamic_lm": {"dtype": "bfloat16", "attn": "sdpa", "threads": 0, "quant": "dynamic_lm"},
}
# The server's modes, measured through its own loading code and engine calls (engine_child).
VARIANTS.update(
    {f"mode_{name}": {"engine": name, "dtype": "float32", **f} for name, f in ENGINE_MODES.items()}
)
PREFILL_TEXT = "The quick brown fox jumps over the lazy dog near the river bank. " * 58
DECODE_PROMPT = "Write a short story about a lighthouse keeper."


class Stamps:
    """A ``generate`` streamer that only records when each ``put`` (prompt, then each new
    token) happened."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one variant in this process; returns the figures."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    spec = VARIANTS[args.variant]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    started = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, dtype=dtype, attn_implementation=spec["attn"]
    ).eval()
    out: dict[str, Any] = {"variant": args.variant, **spec, "threads": torch.get_num_threads()}
    if spec.get("quant") == "dynamic":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif spec.get("quant") == "dynamic_lm":
        from torch.ao.quantization import per_channel_dynamic_qconfig

        model.model.language_model.float()
        model.lm_head.float()  # tied to the embedding in Qwen3-VL-2B; quantizing copies it
        linear = {torch.nn.Linear: per_channel_dynamic_qconfig}
        quantize = torch.ao.quantization.quantize_dynamic
        quantize(model.model.language_model, linear, dtype=torch.qint8, inplace=True)
        holder = torch.nn.Sequential(model.lm_head)  # quantize_dynamic swaps children only
        quantize(holder, linear, dtype=torch.qint8, inplace=True)
        model.lm_head = holder[0]
    elif spec.get("quant") == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
    out["load_s"] = time.perf_counter() - started

    image = synthetic_image(1024, 768, seed=3)
    vis = processor.image_processor(images=[image], return_tensors="pt")
    pixels, grid = vis["pixel_values"].to(dtype), vis["image_grid_thw"]
    enc = processor.tokenizer(PREFILL_TEXT, return_tensors="pt")
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": DECODE_PROMPT}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    gen: dict[str, Any] = {"do_sample": False}
    if spec.get("compile"):
        model.model.visual = torch.compile(model.model.visual, dynamic=False)
        from transformers import CompileConfig

        # generate() compiles the decode step with a static cache; on CPU only when asked to.
        compile_config = CompileConfig(dynamic=False, mode="default")
        compile_config._compile_all_devices = True
        gen.update(cache_implementation="static", compile_config=compile_config)

    def encode() -> None:
        model.model.get_image_features(pixels, grid)

    def prefill() -> None:
        model(**enc, use_cache=True, logits_to_keep=1)  # as generate() does

    d = args.decode_tokens

    def decode() -> float:
        """Seconds per token after the first, from token timestamps of one generate call (one
        length for every call, so a static cache keeps one shape and compiles once)."""
        stamps = Stamps()
        model.generate(**chat, **gen, max_new_tokens=d + 1, min_new_tokens=d + 1, streamer=stamps)
        new = stamps.times[1:]  # times[0] is the prompt, put() before the first step
        return (new[-1] - new[0]) / (len(new) - 1)

    with torch.inference_mode():
        first: dict[str, float] = {}
        for name, fn in (("encode", encode), ("prefill", prefill), ("decode", decode)):
            t0 = time.perf_counter()
            fn()  # warm-up: allocator, oneDNN primitive cache, compilation
            first[name] = time.perf_counter() - t0
        out["first_call_s"] = first
        times: dict[str, list[float]] = {"encode": [], "prefill": [], "decode_step": []}
        for _ in range(args.reps):
            for name, fn in (("encode", encode), ("prefill", prefill)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            times["decode_step"].append(decode())
        ids = model.generate(**chat, **gen, max_new_tokens=d + 1, min_new_tokens=d + 1)
        tokens = ids[0, chat["input_ids"].shape[1] :][:8].tolist()
    # Best of the repetitions: other jobs on the shared cores only ever slow a run down, so the
    # fastest is the closest to what the variant does on a quiet machine; medians stay in JSON.
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    out.update(
        {
            "encode_s": best["encode"],
            "prefill_s": best["prefill"],
            "prefill_tokens": int(enc["input_ids"].shape[1]),
            "decode_tps": 1 / best["decode_step"],
            "median": {
                "encode_s": med["encode"],
                "prefill_s": med["prefill"],
                "decode_tps": 1 / med["decode_step"],
            },
            "samples": times,
            "greedy_tokens": tokens,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        }
    )
    return out


def engine_child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one ``mode_*`` variant in this process; returns the figures."""
    import torch

    spec = VARIANTS[args.variant]
    started = time.perf_counter()
    runner, processor = load_engine(args.model, ENGINE_MODES[spec["engine"]])
    out: dict[str, Any] = {"variant": args.variant, **spec, "threads": torch.get_num_threads()}
    out["load_s"] = time.perf_counter() - started
    out["modes"] = list(runner.modes.describe())
    image = synthetic_image(1024, 768, seed=3)
    text = processor.tokenizer(PREFILL_TEXT, return_tensors="pt")["input_ids"]

    def chat(i: int) -> Any:
        # Prompts of different lengths, so the batch has left-padded rows as in the server.
        words = DECODE_PROMPT + " Make it" + " very" * i + " short."
        content = [{"type": "text", "text": words}]
        return processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        )["input_ids"]  # fmt: skip

    prompts = [chat(i) for i in range(args.batch)]
    d = args.decode_tokens
    parts = {
        "encode": lambda: encode(runner, processor, [image]),
        "prefill": lambda: prefill(runner, text),
        # One step's seconds: the median step of a run (the first steps warm the allocator).
        "decode_b1": lambda: statistics.median(decode_steps(runner, prompts[:1], d)[0]),
        f"decode_b{args.batch}": lambda: statistics.median(decode_steps(runner, prompts, d)[0]),
    }
    first: dict[str, float] = {}
    for name, fn in parts.items():
        t0 = time.perf_counter()
        fn()  # warm-up: allocator, oneDNN primitive cache
        first[name] = time.perf_counter() - t0
    out["first_call_s"] = first
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.reps):
        for name, fn in parts.items():
            if name.startswith("decode"):
                times[name].append(fn())
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    tokens = int(text.shape[1])
    out.update(
        {
            "encode_s": best["encode"],
            "prefill_s": best["prefill"],
            "prefill_tokens": tokens,
            "prefill_tps": tokens / best["prefill"],
            "decode_tps": 1 / best["decode_b1"],
            "batch": args.batch,
            "decode_batch_tps": args.batch / best[f"decode_b{args.batch}"],
            "median": {k: statistics.median(v) for k, v in times.items()},
            "samples": times,
            "greedy_tokens": decode_steps(runner, prompts[:1], 7)[1],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        }
    )
    return out


def run_variant(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One variant in a child process (``bench._load.run_child``)."""
    argv = [sys.executable, __file__, "--child", name, "--model", str(args.model)]
    argv += ["--reps", str(args.reps), "--decode-tokens", str(args.decode_tokens)]
    argv += ["--batch", str(args.batch)]
    return run_child(name, argv, args, REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="mode_* variants: the batched decode")
    p.add_argument("--timeout", type=int, default=900, help="seconds per variant")
    p.add_argument("--max-busy", type=float, default=15.0, help="start when CPU use below, %%")
    p.add_argument("--max-wait", type=float, default=120.0, help="...waiting at most s")
    p.add_argument("--max-others", type=float, default=10.0, help="retry above this, %%")
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_speed")
    p.add_argument("--merge", action="store_true", help="add to / replace in --out's results")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.variant = args.child
        measure = engine_child if "engine" in VARIANTS[args.child] else child
        print(MARK + json.dumps(measure(args)), flush=True)
        return 0
    results = []
    if args.merge and args.out.with_suffix(".json").exists():
        # Keep the earlier run's other variants; the new figures replace same-named ones.
        earlier = json.loads(args.out.with_suffix(".json").read_text())["variants"]
        results = [r for r in earlier if r["variant"] not in args.variants]
    for name in args.variants:
        result = run_variant(args, name)
        results.append(result)
        results.sort(key=lambda r: list(VARIANTS).index(r["variant"]))
        print(json.dumps({k: v for k, v in result.items() if k != "samples"})[:700], flush=True)
    command = " ".join(["bench/cpu_speed.py", *(argv or sys.argv[1:])])
    if args.merge and args.out.with_suffix(".json").exists():
        command = json.loads(args.out.with_suffix(".json").read_text())["command"] + "`, then `"
        command += " ".join(["bench/cpu_speed.py", *(argv or sys.argv[1:])])
    machine = machine_info()
    markdown = render(results, machine, command)
    write_results(args.out, {"machine": machine, "command": command, "variants": results}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
