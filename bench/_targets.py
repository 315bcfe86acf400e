"""The two servers ``bench/serve_bench.py`` compares: started on free loopback ports (or given
by URL), each with the model name it answers to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench._common import ServerProcess, free_port

__all__ = ("Target", "start_targets")


class Target:
    """A server under test: its base URL, the model name it answers to, its process if ours."""

    def __init__(self, name: str, base_url: str, model: str, proc: ServerProcess | None) -> None:
        self.name, self.base_url, self.model, self.proc = name, base_url, model, proc
        self.ready_s: float | None = None

    def body(self, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def _bin(name: str) -> str:
    """A console script of the interpreter running this benchmark (its virtualenv)."""
    return str(Path(sys.executable).parent / name)


def _common_flags(port: int, dtype: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--dtype", dtype]


def start_targets(args: argparse.Namespace, out_dir: Path) -> list[Target]:
    model = str(args.model)
    targets = []
    if args.gateway_url:
        targets.append(Target("vlm-gateway", args.gateway_url.rstrip("/"), model, None))
    else:
        port = free_port()
        proc = ServerProcess(
            "vlm-gateway",
            [_bin("vlm-gateway"), "serve", "--model", model, *_common_flags(port, args.dtype)],
            f"http://127.0.0.1:{port}",
            out_dir / "gateway.log",
            "/ready",
            env=dict(kv.split("=", 1) for kv in args.gateway_env),
        )
        targets.append(Target("vlm-gateway", proc.base_url, model, proc))
    if not args.no_peer:
        if args.peer_url:
            targets.append(Target("transformers serve", args.peer_url.rstrip("/"), model, None))
        else:
            port = free_port()
            proc = ServerProcess(
                "transformers serve",
                [
                    _bin("transformers"),
                    "serve",
                    model,
                    "--device",
                    "cpu",
                    *_common_flags(port, args.dtype),
                ],
                f"http://127.0.0.1:{port}",
                out_dir / "transformers_serve.log",
                "/health",  # the pinned model is loaded before uvicorn starts listening
            )
            targets.append(Target("transformers serve", proc.base_url, model, proc))
    for t in targets:  # both are loading already; wait for each
        if t.proc is not None:
            t.ready_s = t.proc.wait_ready()
            print(f"{t.name} ready in {t.ready_s:.1f}s ({t.base_url})")
    return targets
