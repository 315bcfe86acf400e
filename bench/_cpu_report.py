"""The markdown table of ``bench/cpu_speed.py``."""

from __future__ import annotations

from typing import Any

from bench._common import markdown_table

__all__ = ("render",)


def render(results: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    base = next((r for r in results if r["variant"] == "base" and "error" not in r), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], *["-"] * 10, r["error"].strip().splitlines()[-1][:80]])
            continue
        same = None
        if base is not None:
            same = sum(
                a == b for a, b in zip(r["greedy_tokens"], base["greedy_tokens"], strict=True)
            )
        c = r["contention"]
        rows.append(
            [
                r["variant"],
                r["dtype"],
                r["attn"],
                r["threads"],
                r["encode_s"],
                r["prefill_s"],
                r["decode_tps"],
                r["peak_rss_gib"],
                "-" if same is None else f"{same}/8",
                c["others_cpu_pct"],
                c["load_mean"],
                _note(r),
            ]
        )
    m = machine
    return "\n".join(
        [
            "# CPU speed study (2b-dimension Qwen3-VL, random weights)",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, avx512_bf16 "
            f"{m['avx512_bf16']}, amx {m['amx_bf16']}; torch {m['torch']}, transformers "
            f"{m['transformers']}; {m['date_utc']} UTC.",
            "",
            f"Command: `.venv/bin/python {command}`",
            "",
            "Best of the repetitions. encode = vision encoder on one 1024x768 image (s); "
            "prefill = one forward pass over "
            f"{base['prefill_tokens'] if base else '~800'} text tokens (s); decode = tokens/s "
            "after the first token; RSS = peak resident memory of the process (GiB); same = "
            "greedy tokens equal to base's; others % = share of the machine's CPU that other "
            "processes took during the variant; load = mean 1-minute load average.",
            "",
            markdown_table(
                [
                    "variant",
                    "dtype",
                    "attn",
                    "threads",
                    "encode s",
                    "prefill s",
                    "decode tok/s",
                    "RSS GiB",
                    "same",
                    "others %",
                    "load",
                    "note",
                ],
                rows,
            ),
        ]
    )


def _note(r: dict[str, Any]) -> str:
    first = r["first_call_s"]
    if r.get("compile"):
        return f"compiling: encode {first['encode']:.0f} s, decode {first['decode']:.0f} s"
    if r.get("quant"):
        return f"load + quantize {r['load_s']:.0f} s"
    return ""
