"""The gateway's own overhead: latency of a non-streaming text request through HTTP minus a
direct ``model.generate`` on identical inputs, with the tiny random model.

Usage (repository root)::

    .venv/bin/python bench/overhead_bench.py [--n 200] [--max-tokens 1 16] [--model DIR]

Without ``--model`` the tiny model is built in a temporary directory. The script starts
``vlm-gateway serve`` on a loopback port (float32, the dtype the direct path uses too), loads
the same checkpoint in this process, and runs N rounds; each round is one HTTP request (httpx,
keep-alive, as an SDK client does) followed by the direct calls, so both see the same machine
state. Direct paths:

- ``generate``: ``model.generate`` alone on the pre-tokenised prompt (the strict baseline).
- ``template+generate+decode``: ``apply_chat_template`` + ``generate`` + ``decode``, the work
  any server must do; the difference to it is the gateway's share above the bare minimum.

Each ``--max-tokens`` value is measured in every round: 1 token isolates the per-request cost
(HTTP, parsing, routing, admission, prompt building, the hop to the model thread), 16 adds the
per-token cost of the gateway's decoding loop (stop strings, cancellation check, streaming
detokenisation). The prompt makes the tiny model decode exactly that many tokens (no end-of-turn
token), and the script checks that the HTTP answer equals the direct one (token counts and
text), so the two paths did the same work. A pause (``--gap-ms``) precedes every timed call and
the order of the three paths rotates each round: torch's OpenMP threads spin for a while after a
call ends, and the server may still work after it answered (cache upkeep); without the pause
and the rotation, that slows the next path (measured: +10-20 ms on HTTP at 16 tokens).
Target (issue 7): overhead p50 <= 5 ms.
Results: ``bench/results/overhead_bench.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    LoadSampler,
    ServerProcess,
    free_port,
    machine_info,
    pct,
    wait_for_quiet,
    write_results,
)
from bench._overhead_report import render, server_split

SYSTEM = "You are a helpful assistant."
PROMPT = "Write a long essay."  # the tiny model (seed 0) never emits end-of-turn after it


def stats_ms(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": pct(ms, 50) or 0.0,
        "p95_ms": pct(ms, 95) or 0.0,
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint directory (default: build tiny)")
    p.add_argument("--n", type=int, default=200, help="measured rounds")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--gap-ms", type=float, default=100.0, help="pause before each timed call")
    p.add_argument("--max-tokens", type=int, nargs="+", default=[1, 16])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overhead_bench")
    args = p.parse_args(argv)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from adapters.testing.models import build_test_model

            model_dir = build_test_model(Path(tmp) / "tiny", "tiny")
        port = free_port()
        server = ServerProcess(
            "vlm-gateway",
            [
                str(Path(sys.executable).parent / "vlm-gateway"),
                "serve",
                "--model",
                str(model_dir),
                "--port",
                str(port),
                "--dtype",
                "float32",
            ],
            f"http://127.0.0.1:{port}",
            Path(tmp) / "gateway.log",
            "/ready",
        )
        try:
            processor = AutoProcessor.from_pretrained(model_dir)
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
            model.eval()
            server.wait_ready()
            result = measure(args, str(model_dir), server, processor, model)
        finally:
            server.stop()
    result["machine"] = machine_info()
    result["command"] = " ".join(["bench/overhead_bench.py", *(argv or sys.argv[1:])])
    markdown = render(result)
    write_results(args.out, result, markdown)
    print(markdown)
    return 0


def measure(
    args: argparse.Namespace, model_name: str, server: ServerProcess, processor: Any, model: Any
) -> dict[str, Any]:
    pids = [server.process.pid]
    hf_messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
    ]
    wire_messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]

    def template() -> Any:
        return processor.apply_chat_template(
            hf_messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )

    inputs = template()
    n_prompt = int(inputs["input_ids"].shape[1])
    gap = args.gap_ms / 1000
    samples = {n: {"http": [], "generate": [], "full": []} for n in args.max_tokens}
    checks = {}
    with httpx.Client(base_url=server.base_url, timeout=60) as client, torch.inference_mode():
        for n in args.max_tokens:  # same work on both paths: prompt, greedy tokens, text
            body = {
                "model": model_name,
                "messages": wire_messages,
                "max_tokens": n,
                "temperature": 0,
            }
            answer = client.post("/v1/chat/completions", json=body).json()
            new = model.generate(**inputs, do_sample=False, max_new_tokens=n)[0, n_prompt:]
            expected = processor.tokenizer.decode(new, skip_special_tokens=True)
            checks[n] = (
                answer["usage"]["prompt_tokens"] == n_prompt
                and answer["usage"]["completion_tokens"] == len(new) == n
                and answer["choices"][0]["message"]["content"] == expected
            )
            if not checks[n]:
                raise SystemExit(f"HTTP and direct paths differ: {answer} vs {expected!r}")
        quiet = wait_for_quiet(15.0, 60)
        with LoadSampler(pids) as sampler:
            for i in range(args.warmup + args.n):
                for n in args.max_tokens:
                    body = {
                        "model": model_name,
                        "messages": wire_messages,
                        "max_tokens": n,
                        "temperature": 0,
                    }

                    def http(body: dict[str, Any] = body) -> None:
                        r = client.post("/v1/chat/completions", json=body)
                        if r.status_code != 200:
                            raise SystemExit(f"HTTP {r.status_code}: {r.text[:200]}")

                    def generate(n: int = n) -> None:
                        model.generate(**inputs, do_sample=False, max_new_tokens=n)

                    def full(n: int = n) -> None:
                        out = model.generate(**template(), do_sample=False, max_new_tokens=n)
                        processor.tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True)

                    paths = [("http", http), ("generate", generate), ("full", full)]
                    # Rotate the order each round: whatever one path leaves running (the
                    # server's post-response work, spinning threads) hits each other path alike.
                    for name, fn in paths[i % 3 :] + paths[: i % 3]:
                        time.sleep(gap)
                        t0 = time.perf_counter()
                        fn()
                        if i >= args.warmup:
                            samples[n][name].append(time.perf_counter() - t0)
    inside = server_split(server.log_path, args.max_tokens, args.n)
    rows = []
    for n, by_path in samples.items():
        st = {path: stats_ms(v) for path, v in by_path.items()}
        if n in inside:
            st["server_total"] = stats_ms(inside[n]["total"])
            st["server_outside_model"] = stats_ms(inside[n]["outside"])
        paired = [h - g for h, g in zip(by_path["http"], by_path["generate"], strict=True)]
        rows.append(
            {
                "max_tokens": n,
                **st,
                "paired_difference": stats_ms(paired),
                "overhead_p50_ms": st["http"]["p50_ms"] - st["generate"]["p50_ms"],
                "overhead_vs_full_p50_ms": st["http"]["p50_ms"] - st["full"]["p50_ms"],
            }
        )
    return {
        "settings": {
            "n": args.n,
            "warmup": args.warmup,
            "gap_ms": args.gap_ms,
            "prompt_tokens": n_prompt,
            "dtype": "float32",
            "torch_threads": torch.get_num_threads(),
        },
        "same_work_on_both_paths": all(checks.values()),
        "results": rows,
        "load": {**quiet, **sampler.summary()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
