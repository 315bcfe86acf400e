"""Report side of ``overhead_bench.py``: the gateway's own time per request read back from its
request log, and the Markdown rendering of the results."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench._common import markdown_table

__all__ = ("render", "server_split")


_LINE = re.compile(
    r"route=/v1/chat/completions status=200 duration_ms=([\d.]+) .*?"
    r"completion_tokens=(\d+) .*?timings_ms=(\S+)"
)
_MODEL_STAGES = ("vision_encode", "prefill", "decode")


def server_split(
    log_path: Path, max_tokens: list[int], n: int
) -> dict[int, dict[str, list[float]]]:
    """From the gateway's request log (the last ``n`` requests of each length): its own
    duration, and that duration minus the model's stages (``timings_ms``: vision_encode,
    prefill, decode), i.e. the time the gateway spent outside the model. Seconds."""
    out: dict[int, dict[str, list[float]]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if m is None or int(m.group(2)) not in max_tokens:
            continue
        stages = dict(kv.split(":", 1) for kv in m.group(3).split(",") if ":" in kv)
        model_ms = sum(float(stages.get(k, 0.0)) for k in _MODEL_STAGES)
        entry = out.setdefault(int(m.group(2)), {"total": [], "outside": []})
        entry["total"].append(float(m.group(1)) / 1000)
        entry["outside"].append((float(m.group(1)) - model_ms) / 1000)
    return {k: {name: v[-n:] for name, v in e.items()} for k, e in out.items()}


def render(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    rows = []
    for row in r["results"]:
        inside = row.get("server_outside_model", {}).get("p50_ms")
        server = row.get("server_total", {}).get("p50_ms")
        rows.append(
            [
                row["max_tokens"],
                row["http"]["p50_ms"],
                row["http"]["p95_ms"],
                row["generate"]["p50_ms"],
                row["full"]["p50_ms"],
                row["overhead_p50_ms"],
                row["paired_difference"]["p50_ms"],
                row["overhead_vs_full_p50_ms"],
                server,
                inside,
                "met" if row["overhead_p50_ms"] <= 5 else "NOT met",
            ]
        )
    headers = [
        "max_tokens",
        "HTTP p50",
        "HTTP p95",
        "generate p50",
        "full p50",
        "overhead",
        "paired",
        "overhead vs full",
        "server p50",
        "outside model p50",
        "<= 5 ms",
    ]
    return "\n".join(
        [
            "# Gateway overhead: HTTP vs direct model.generate (tiny model)",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, transformers "
            f"{m['transformers']}; {m['date_utc']} UTC. {s['n']} rounds after {s['warmup']} "
            f"warm-up, {s['gap_ms']:g} ms pause before each timed call, order rotated, "
            f"{s['prompt_tokens']} prompt tokens, greedy, float32, "
            f"{s['torch_threads']} torch threads. Other processes took "
            f"{r['load']['others_cpu_pct']}% of the CPU during the run (1-minute load "
            f"{r['load']['load_mean']}).",
            "",
            f"Command: `.venv/bin/python {r['command']}`",
            "",
            "Milliseconds. generate = `model.generate` alone on the pre-tokenised prompt; full = "
            "`apply_chat_template` + `generate` + `decode`. overhead = HTTP p50 - generate p50 "
            "(the issue's definition); paired = p50 of (HTTP - generate) within each round. "
            "server = the gateway's own request duration from its log; outside model = that "
            "duration minus its vision_encode, prefill and decode stages (parsing, routing, "
            "admission, prompt building, the hop to the model thread, response). The gateway "
            "does not call `generate`: it runs its own decoding loop and reuses the cached "
            "prompt prefix, so its model work can be cheaper than `generate`'s and the overhead "
            "column can even be negative; outside model is the framework's own share. Same "
            "prompt tokens, completion tokens and text on both paths: "
            f"{r['same_work_on_both_paths']}.",
            "",
            markdown_table(headers, rows),
        ]
    )
