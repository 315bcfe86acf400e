"""Float32 Linear layers on the CPU for a few rows: PyTorch's default ``nn.Linear`` against
prepacked variants, and a decode step of the language model with and without
``adapters.local.packing`` (the ``[model] prepack`` setting). Results:
``bench/results/linear_bench.{md,json}``.

Usage (repository root)::

    .venv/bin/python bench/linear_bench.py            # 2b dimensions: ~8 GiB RAM, ~3 minutes
    .venv/bin/python bench/linear_bench.py --quick    # tiny model, seconds: a smoke test

1. One Linear (``--shape OUT IN``, 6144x2048: Qwen3-VL-2B's MLP up projection) at
   ``--rows`` rows (1, 4, 8), the variants interleaved round by round: ``default``
   (``nn.Linear``), ``onednn_packed`` (``PackedLinear``: ``mkldnn._reorder_linear_weight`` +
   ``mkldnn._linear_pointwise``, what ``prepack`` uses), ``mkldnn_linear``
   (``torch.utils.mkldnn.MkldnnLinear``, TorchScript, converts the input to the mkldnn layout on
   every call) and ``mkl_packed`` (``mkl._mkl_linear``: packed per row count, and it needs the
   dense weight beside the packed one).
2. One decode step (``logits_to_keep=1``, as the engine's batch runs it) of the language model
   with the real Qwen3-VL-2B dimensions (``adapters.testing.models.checkpoint_config``; random
   float32 weights built in memory, vision encoder cut to its patch embedding, which a decode
   step never runs) at ``--batches`` rows (1, 4, 8) over a ``--context``-token key/value cache:
   first unpacked, then packed in place (packing frees the dense weights, so the two phases
   cannot interleave). ``--layers`` cuts the decoder for a quicker look (lm_head's share grows).

Figures: the best of the repetitions (other jobs on shared cores only ever slow a run down;
medians are in the JSON), with the CPU share other processes took during each part.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.local.packing import PackedLinear, apply_prepack
from bench._common import (
    REPO,
    LoadSampler,
    machine_info,
    markdown_table,
    wait_for_quiet,
    write_results,
)

# Qwen3-VL-2B-Instruct's special token ids: the config needs them, the decode step does not care.
_QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def linear_variants(linear: nn.Linear, rows: list[int]) -> dict[str, Callable[[torch.Tensor], Any]]:
    weight, bias = linear.weight.detach(), linear.bias.detach()
    with warnings.catch_warnings():  # TorchScript's deprecation notice
        warnings.simplefilter("ignore")
        from torch.utils.mkldnn import MkldnnLinear

        mkldnn_linear = MkldnnLinear(linear, torch.float32)
    mkl = {m: torch.ops.mkl._mkl_reorder_linear_weight(weight, m) for m in rows}
    return {
        "default": linear,
        "onednn_packed": PackedLinear(linear),
        "mkldnn_linear": mkldnn_linear,
        "mkl_packed": lambda x: torch.ops.mkl._mkl_linear(x, mkl[x.shape[0]], weight, bias, len(x)),
    }


def bench_linear(args: argparse.Namespace) -> list[dict[str, Any]]:
    out_features, in_features = args.shape
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features).eval()
    variants = linear_variants(linear, args.rows)
    samples: dict[tuple[int, str], list[float]] = {}
    errors: dict[tuple[int, str], float] = {}
    with torch.inference_mode():
        for m in args.rows:
            x = torch.randn(m, in_features)
            for name, fn in variants.items():
                errors[m, name] = float((fn(x) - linear(x)).abs().max())
        for _ in range(args.reps):  # round by round, so drift touches every variant alike
            for m in args.rows:
                x = torch.randn(m, in_features)
                for name, fn in variants.items():
                    fn(x)  # this row count's primitive and cache lines, not the previous one's
                    samples.setdefault((m, name), []).append(timed(functools.partial(fn, x)))
    rows = []
    for m in args.rows:
        base = min(samples[m, "default"])
        for name in variants:
            best = min(samples[m, name])
            median = statistics.median(samples[m, name])
            row = {"rows": m, "variant": name, "best_ms": best, "median_ms": median}
            rows.append({**row, "vs_default": best / base, "max_abs_error": errors[m, name]})
    return rows


def build_model(size: str, layers: int | None) -> Any:
    from transformers import Qwen3VLForConditionalGeneration

    from adapters.testing.models import build_test_processor, checkpoint_config

    if size == "2b":
        config = checkpoint_config("2b", _QWEN_IDS, 151669)  # no tokenizer needed
    else:
        tokenizer = build_test_processor("tiny").tokenizer
        ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in _QWEN_IDS}
        config = checkpoint_config("tiny", ids, len(tokenizer))
    text, vision = config.get_text_config(), config.vision_config
    if layers:
        text.num_hidden_layers = layers
    # A decode step never runs the vision encoder: keep its patch embedding and merger only.
    vision.depth = 0  # type: ignore[union-attr]
    vision.deepstack_visual_indexes = []  # type: ignore[union-attr]
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).float().eval()
    model.tie_weights()
    return model


def bench_decode(model: Any, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Per batch size: ms per decode step (best, median) and the first step's logits."""
    from transformers import DynamicCache

    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(1)
    out: dict[int, dict[str, Any]] = {}
    with torch.inference_mode():
        for batch in args.batches:
            ids = torch.randint(0, vocab, (batch, args.context), generator=generator)
            cache = DynamicCache()
            prefill = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            token = prefill.logits[:, -1].argmax(-1)
            times, first = [], None
            for step in range(args.warmup + args.steps):
                # Explicit (4, batch, 1) positions, as the engine's batch passes them: text
                # position, then the three M-RoPE positions (equal for text).
                pos = torch.full((4, batch, 1), args.context + step, dtype=torch.long)
                start = time.perf_counter()
                kwargs = {"position_ids": pos, "cache": cache, "use_cache": True}
                logits = model(input_ids=token[:, None], logits_to_keep=1, **kwargs).logits[:, -1]
                elapsed = (time.perf_counter() - start) * 1000
                first = logits.clone() if first is None else first
                token = logits.argmax(-1)
                if step >= args.warmup:
                    times.append(elapsed)
            out[batch] = {"best_ms": min(times), "median_ms": statistics.median(times)}
            out[batch]["logits"] = first
    return out


def decode_phases(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = build_model(args.size, args.layers)
    rows: list[dict[str, Any]] = []
    phases: dict[str, dict[int, dict[str, Any]]] = {}
    for phase in ("default", "prepack"):
        if phase == "prepack":
            report = apply_prepack(model, "on", torch.device("cpu"), torch.float32)
            print(f"  {report.describe()}", flush=True)
        gc.collect()  # the replaced dense weights
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 2)  # the weights, no cache yet
        print(f"  {phase}: {rss} GiB resident", flush=True)
        with LoadSampler() as sampler:
            phases[phase] = bench_decode(model, args)
        for batch, r in phases[phase].items():
            one = phases[phase][args.batches[0]]["best_ms"]
            row = {"phase": phase, "batch": batch, "best_ms": r["best_ms"], "rss_gib": rss}
            row.update(median_ms=r["median_ms"], ms_per_row=r["best_ms"] / batch)
            row[f"vs_batch{args.batches[0]}"] = r["best_ms"] / one
            if phase == "prepack":
                ref = phases["default"][batch]["logits"]
                row["max_abs_logit_diff"] = float((r["logits"] - ref).abs().max())
                row["same_argmax"] = bool(torch.equal(r["logits"].argmax(-1), ref.argmax(-1)))
            rows.append({**row, "contention": sampler.summary()})
    return rows


def render(data: dict[str, Any]) -> str:
    m, a = data["machine"], data["args"]
    lin = [
        [r["rows"], r["variant"], r["best_ms"], r["median_ms"], r["vs_default"], r["max_abs_error"]]
        for r in data["linear"]
    ]
    first = a["batches"][0]
    keys = ("phase", "batch", "best_ms", "median_ms", "ms_per_row", f"vs_batch{first}", "rss_gib")
    dec = [
        [
            *(r[k] for k in keys),
            r.get("max_abs_logit_diff"),
            r.get("same_argmax"),
            r["contention"]["others_cpu_pct"],
        ]
        for r in data["decode"]
    ]
    return "\n".join(
        [
            "# Float32 Linear on the CPU: default vs prepacked",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch "
            f"{m['torch']}, transformers {m['transformers']}; {a['threads']} threads; "
            f"{m['date_utc']} UTC.",
            "",
            f"Command: `.venv/bin/python {data['command']}`",
            "",
            f"## One Linear {a['shape'][0]}x{a['shape'][1]} (others took "
            f"{data['linear_contention']['others_cpu_pct']}% of the CPU)",
            "",
            markdown_table(
                ["rows", "variant", "best ms", "median ms", "vs default", "max abs err"], lin
            ),
            "",
            f"## Decode step, {a['size']} dimensions"
            + (f", {a['layers']} layers" if a["layers"] else "")
            + f", {a['context']}-token cache",
            "",
            markdown_table(
                [
                    *("phase", "batch", "best ms", "median ms", "ms/row", f"vs batch {first}"),
                    "resident GiB",
                    *("max abs logit diff", "same argmax", "others %"),
                ],
                dec,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, few repetitions")
    p.add_argument("--shape", type=int, nargs=2, default=[6144, 2048], metavar=("OUT", "IN"))
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--layers", type=int, default=0, help="decoder layers; 0: the config's")
    p.add_argument("--context", type=int, default=64, help="cached tokens per row")
    p.add_argument("--reps", type=int, default=0, help="Linear rounds; 0: 20 (quick: 3)")
    p.add_argument("--steps", type=int, default=0, help="decode steps timed; 0: 10 (quick: 3)")
    p.add_argument("--warmup", type=int, default=2, help="decode steps not timed")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    p.add_argument("--max-busy", type=float, default=15.0, help="start below this CPU use, %%")
    p.add_argument("--max-wait", type=float, default=120.0, help="...waiting at most s")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "linear_bench")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.size = "tiny" if args.quick else "2b"
    args.reps = args.reps or (3 if args.quick else 20)
    args.steps = args.steps or (3 if args.quick else 10)
    args.threads = torch.get_num_threads()
    wait_for_quiet(args.max_busy, args.max_wait)
    with LoadSampler() as sampler:
        linear = bench_linear(args)
    print(f"  Linear done ({sampler.summary()['others_cpu_pct']}% CPU to others)", flush=True)
    decode = decode_phases(args)
    command = " ".join(["bench/linear_bench.py", *(argv if argv is not None else sys.argv[1:])])
    data = {
        "machine": machine_info(),
        "command": command,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "linear": linear,
        "linear_contention": sampler.summary(),
        "decode": decode,
    }
    markdown = render(data)
    write_results(args.out, data, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
