"""Accuracy of the CPU speed modes (``[model] quantize``, ``quantize_vision``, ``compile``, and
prepacking) against full precision (float32, plain ``nn.Linear``): the same random weights, the
same inputs, each mode loaded through the server's loading code (``bench/_modes.py``). Results:
``bench/results/accuracy.{md,json}``.

Usage (repository root)::

    .venv/bin/python bench/accuracy.py            # /tmp/vlm-2b, every mode: ~1 h on 2 AVX2 cores
    .venv/bin/python bench/accuracy.py --model /tmp/tiny --prompts 2 --tokens 8   # smoke test

For each of ``--prompts`` chat prompts with one synthetic image (``--image``, deterministic
drawings, one per prompt) and a question:

- vision features: relative error (``|mode - fp32| / |fp32|``, Frobenius) of the merged patch
  embeddings and of the DeepStack features;
- logits: the float32 model's greedy continuation (``--tokens`` tokens, EOS not allowed to end
  it) is fed to every mode (teacher forcing), so positions line up even where a mode's own
  choice would differ; at each of those positions: relative error of the logits, top-1 agreement,
  top-5 overlap (shared tokens of the two top-5 sets / 5) and whether float32's choice is in the
  mode's top 5;
- greedy tokens: each mode's own greedy continuation (``model.generate``, the engine's greedy
  output is token-identical to it) against float32's: the share of prompts that agree on all
  tokens, and the mean number of leading tokens that agree.

On random weights the logits are nearly flat (std 0.02 weights), so near-ties flip easily: greedy
agreement here likely understates a trained model's; relative errors and top-5 overlap are the
more portable figures. Modes run one after another in this process (one model in
memory at a time; float32's outputs are kept: about 40 MB per prompt at 64 tokens on the 2b
vocabulary).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, machine_info, markdown_table, synthetic_image, write_results
from bench._modes import ENGINE_MODES, encode, load_engine, release

QUESTIONS = (
    "Describe this picture in detail.",
    "What shapes do you see, and what colours are they?",
    "Read any text in the image.",
    "How many ellipses are there?",
    "What is in the top left corner?",
    "Write a caption for this image.",
    "Is the background light or dark?",
    "List every object from left to right.",
)
REFERENCE = "fp32"


def prompts(processor: Any, count: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        image = synthetic_image(*size, seed=100 + i)
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
                ],
            }
        ]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        )  # fmt: skip
        out.append({"image": image, "inputs": inputs})
    return out


def measure(runner: Any, processor: Any, items: list[dict[str, Any]], tokens: int,
            forced: list[torch.Tensor] | None) -> list[dict[str, Any]]:  # fmt: skip
    """Per prompt: vision features, own greedy tokens, logits at the teacher-forced positions
    (``forced``: float32's tokens; None: this is float32, force its own)."""
    from adapters.local.vision import encoder_outputs

    model = runner.model
    results = []
    for i, item in enumerate(items):
        inputs = dict(item["inputs"])
        features = encode(runner, processor, [item["image"]])[0]
        # The image is encoded once: generate and the forced pass take its features, as the
        # engine feeds cached features (the reference tests check this gives the same tokens).
        inputs.pop("pixel_values")
        inputs["mm_encoder_outputs"] = {"image": encoder_outputs([features])}
        prompt = inputs.pop("input_ids")
        with torch.inference_mode():
            ids = model.generate(
                input_ids=prompt,
                **inputs,
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
            )[0, prompt.shape[1] :]
            sequence = forced[i] if forced is not None else ids
            full = torch.cat((prompt[0], sequence[:-1]))[None]
            extra = {k: v for k, v in inputs.items() if k != "attention_mask"}
            if "mm_token_type_ids" in extra:  # covers the prompt; the forced tokens are text
                pad = torch.zeros(1, tokens - 1, dtype=extra["mm_token_type_ids"].dtype)
                extra["mm_token_type_ids"] = torch.cat((extra["mm_token_type_ids"], pad), 1)
            logits = model(input_ids=full, **extra, logits_to_keep=tokens).logits[0].float()
        results.append(
            {
                "embeds": features.embeds.float(),
                "deepstack": torch.cat([d.float().flatten() for d in features.deepstack]),
                "tokens": ids,
                "logits": logits,
            }
        )
        print(f"    prompt {i + 1}/{len(items)}", flush=True)
    return results


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def compare(mode: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, Any]:
    rows: dict[str, list[float]] = {k: [] for k in ("embeds", "deepstack", "logits")}
    top1, top5, ref_in_top5, leading, same = [], [], [], [], 0
    for m, r in zip(mode, ref, strict=True):
        for key in rows:
            rows[key].append(_relative(m[key], r[key]))
        m5, r5 = m["logits"].topk(5).indices, r["logits"].topk(5).indices
        top1 += (m5[:, 0] == r5[:, 0]).float().tolist()
        top5 += [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(m5, r5, strict=True)]
        ref_in_top5 += (m5 == r5[:, :1]).any(-1).float().tolist()
        agree = (m["tokens"] == r["tokens"]).long()
        leading.append(int(agree.cumprod(0).sum()))
        same += int(bool(agree.all()))
    return {
        "vision_rel_err_mean": statistics.fmean(rows["embeds"]),
        "vision_rel_err_max": max(rows["embeds"]),
        "deepstack_rel_err_mean": statistics.fmean(rows["deepstack"]),
        "logits_rel_err_mean": statistics.fmean(rows["logits"]),
        "logits_rel_err_max": max(rows["logits"]),
        "top1_agreement": statistics.fmean(top1),
        "top5_overlap": statistics.fmean(top5),
        "ref_top1_in_top5": statistics.fmean(ref_in_top5),
        "greedy_identical_prompts": same,
        "greedy_leading_tokens_mean": statistics.fmean(leading),
        "greedy_leading_tokens": leading,
    }


def render(data: dict[str, Any]) -> str:
    m, rows = data["machine"], []
    for r in data["modes"]:
        if "error" in r:
            rows.append([r["mode"], *["-"] * 9, r["error"][:80]])
            continue
        rows.append(
            [r["mode"], r["vision_rel_err_mean"], r["vision_rel_err_max"],
             r["deepstack_rel_err_mean"], r["logits_rel_err_mean"], r["logits_rel_err_max"],
             r["top1_agreement"], r["top5_overlap"], r["ref_top1_in_top5"],
             f"{r['greedy_identical_prompts']}/{data['prompts']}, "
             f"{r['greedy_leading_tokens_mean']:.1f}/{data['tokens']}"]
        )  # fmt: skip
    headers = ["mode", "vision err", "vision max", "deepstack err", "logits err", "logits max",
               "top-1", "top-5 overlap", "fp32 top-1 in top-5", "greedy same, leading"]  # fmt: skip
    return "\n".join(
        [
            f"# Accuracy of the CPU speed modes against float32 ({data['model_name']}, random "
            "weights)",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch "
            f"{m['torch']}, transformers {m['transformers']}; {m['date_utc']} UTC.",
            "",
            f"Command: `.venv/bin/python {data['command']}`",
            "",
            f"{data['prompts']} prompts, each with one {data['image']} synthetic image; "
            f"{data['tokens']} tokens each. err = relative error against float32 (mean, max over "
            "prompts); top-1 / top-5 overlap at float32's greedy positions (teacher-forced); "
            "greedy same = prompts whose whole greedy continuation equals float32's, leading = "
            "mean leading tokens that agree. Modes: "
            + "; ".join(f"{k} = {v or 'defaults'}" for k, v in data["mode_fields"].items())
            + ".",
            "",
            markdown_table(headers, rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("/tmp/vlm-2b"))
    others = [m for m in ENGINE_MODES if m != REFERENCE]
    p.add_argument("--modes", nargs="+", choices=others, default=others)
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--image", default="512x384", help="WIDTHxHEIGHT of the synthetic images")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "accuracy")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    size = tuple(int(v) for v in args.image.split("x"))
    assert len(size) == 2, "--image is WIDTHxHEIGHT"
    results: list[dict[str, Any]] = []
    ref: list[dict[str, Any]] = []
    for name in (REFERENCE, *args.modes):
        print(f"{name}: loading", flush=True)
        started = time.perf_counter()
        try:
            runner, processor = load_engine(args.model, ENGINE_MODES[name], args.threads)
            load_s = time.perf_counter() - started
            items = prompts(processor, args.prompts, (size[0], size[1]))
            forced = [r["tokens"] for r in ref] if ref else None
            measured = measure(runner, processor, items, args.tokens, forced)
            release(runner)
            del runner
        except Exception as exc:  # one mode failing must not lose the others' figures
            if name == REFERENCE:
                raise
            results.append({"mode": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        seconds = time.perf_counter() - started
        if name == REFERENCE:
            ref = measured
            continue
        results.append({"mode": name, "load_s": load_s, "seconds": seconds,
                        **compare(measured, ref)})  # fmt: skip
        del measured
        gc.collect()
        print({k: v for k, v in results[-1].items() if k != "greedy_leading_tokens"}, flush=True)
    command = " ".join(["bench/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    data = {
        "machine": machine_info(),
        "command": command,
        "model_name": args.model.name,
        "prompts": args.prompts,
        "tokens": args.tokens,
        "image": args.image,
        "mode_fields": {k: ENGINE_MODES[k] for k in (REFERENCE, *args.modes)},
        "modes": results,
    }
    markdown = render(data)
    write_results(args.out, data, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
