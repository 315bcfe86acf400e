"""The markdown table of ``bench/cpu_speed.py``."""

from __future__ import annotations

from typing import Any

from bench._common import markdown_table

__all__ = ("render",)


def render(results: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    modes = [r for r in results if r["variant"].startswith("mode_")]
    results = [r for r in results if not r["variant"].startswith("mode_")]
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
    head = [
        "# CPU speed study (2b-dimension Qwen3-VL, random weights)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, flags "
        f"{' '.join(m.get('cpu_flags', []))}, avx512_bf16 {m['avx512_bf16']}, amx "
        f"{m['amx_bf16']}; torch {m['torch']}, transformers {m['transformers']}; "
        f"{m['date_utc']} UTC.",
        "",
        f"Command: `.venv/bin/python {command}`",
        "",
    ]
    tables = [_modes_table(modes)] if modes else []
    if not results:
        return "\n".join(head + tables)
    return "\n".join(
        head
        + [
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
        + (["", *tables] if tables else [])
    )


def _modes_table(results: list[dict[str, Any]]) -> str:
    """The server's speed modes (``mode_*`` variants), as the engine runs them."""
    ref = next((r for r in results if r["variant"] == "mode_fp32" and "error" not in r), None)
    batch = next((r["batch"] for r in results if "batch" in r), 8)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], *["-"] * 10, r["error"].strip().splitlines()[-1][:80]])
            continue
        same = None
        if ref is not None:
            pairs = zip(r["greedy_tokens"], ref["greedy_tokens"], strict=True)
            same = f"{sum(a == b for a, b in pairs)}/{len(ref['greedy_tokens'])}"
        c = r["contention"]
        fields = {k: v for k, v in r.items() if k in ("prepack", "quantize", "compile")}
        fields |= {k: True for k in ("quantize_vision", "quantize_head") if r.get(k)}
        setting = ", ".join(f"{k}={v}" for k, v in fields.items())
        rows.append(
            [
                r["variant"],
                setting,
                r["encode_s"],
                r["prefill_tps"],
                r["decode_tps"],
                r["decode_batch_tps"],
                r["peak_rss_gib"],
                r["load_s"],
                same,
                c["others_cpu_pct"],
                c["load_mean"],
            ]
        )
    return "\n".join(
        [
            "## The server's speed modes (float32 on the CPU, the engine's own calls)",
            "",
            "encode = vision encoder on one 1024x768 image (s); prefill = tokens/s of one forward "
            f"pass over {results[0].get('prefill_tokens', '~800')} text tokens; decode = tokens/s "
            f"of the engine's batched step at batch 1 and at batch {batch} (every row's token "
            "counted); RSS = peak resident memory (GiB); load = seconds to load, quantize and "
            "compile; same = greedy tokens at batch 1 equal to mode_fp32's. Best of the "
            "repetitions (a decode repetition: the median step of a run); others % = share of "
            "the machine's CPU that other processes took during the variant; load = mean 1-minute "
            "load average.",
            "",
            markdown_table(
                [
                    "variant",
                    "settings",
                    "encode s",
                    "prefill tok/s",
                    "decode tok/s b1",
                    f"decode tok/s b{batch}",
                    "RSS GiB",
                    "load s",
                    "same",
                    "others %",
                    "load",
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
