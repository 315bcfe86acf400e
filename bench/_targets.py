"""The servers ``bench/serve_bench.py`` compares: the gateway, its variants (the same gateway
with other settings), ``transformers serve`` and vLLM's CPU build. Each is started on a free
loopback port when the benchmark reaches it (or given by URL), answers to the same model name,
and is measured with its whole process tree (vLLM runs its engine in child processes)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench._common import ServerProcess, free_port

__all__ = (
    "GATEWAY",
    "TRANSFORMERS",
    "VLLM",
    "Target",
    "cpu_list",
    "memory_mib",
    "parse_variant",
    "plan_targets",
    "process_tree",
)

GATEWAY = "vlm-gateway"
TRANSFORMERS = "transformers serve"
VLLM = "vLLM"


class Target:
    """A server under test: the model name it answers to, how to start it (None: it runs
    already at ``base_url``), and what starting it cost (ready time, resident memory)."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str = "",
        launch: Callable[[], ServerProcess] | None = None,
        dtype: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.model, self.base_url = name, model, base_url.rstrip("/")
        self.dtype, self.env = dtype, dict(env or {})
        self._launch = launch
        self.proc: ServerProcess | None = None
        self.ready_s: float | None = None
        self.rss_ready_mib: float | None = None
        self.rss_peak_mib: float | None = None
        self.error: str | None = None
        self._started = 0.0

    def body(self, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def start(self) -> None:
        """Start the process (no-op for a server given by URL); ``wait_ready`` waits for it."""
        if self._launch is not None and self.proc is None:
            self._started = time.monotonic()
            self.proc = self._launch()
            self.base_url = self.proc.base_url

    def wait_ready(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait_ready()
        except Exception:
            self.stop()
            raise
        self.ready_s = time.monotonic() - self._started  # from the start, not from the wait
        self.rss_ready_mib = memory_mib(self.pids(), "VmRSS")
        print(
            f"{self.name} ready in {self.ready_s:.1f}s ({self.base_url}), "
            f"RSS {self.rss_ready_mib} MiB",
            flush=True,
        )

    def pids(self) -> list[int]:
        """The server process and every process below it (empty for a server given by URL)."""
        return process_tree(self.proc.process.pid) if self.proc is not None else []

    def stop(self) -> None:
        """Record the peak memory, stop the server, and kill what it leaves behind."""
        if self.proc is None or self.proc.process.poll() is not None:
            if self.proc is not None:
                self.proc.stop()  # closes the log
            return
        tree = self.pids()
        self.rss_peak_mib = memory_mib(tree, "VmHWM")
        started = {pid: _start_time(pid) for pid in tree[1:]}
        self.proc.stop()
        deadline = time.monotonic() + 15
        for pid, when in started.items():
            while when is not None and _start_time(pid) == when and time.monotonic() < deadline:
                time.sleep(0.2)
            if when is not None and _start_time(pid) == when:
                os.kill(pid, signal.SIGKILL)  # an engine process its server did not take down

    def info(self) -> dict[str, Any]:
        """What the report says about this server."""
        return {
            "command": self.proc.command if self.proc is not None else None,
            "url": self.base_url or None,
            "dtype": self.dtype,
            "env": self.env,
            "ready_s": self.ready_s,
            "rss_ready_mib": self.rss_ready_mib,
            "rss_peak_mib": self.rss_peak_mib,
            "error": self.error,
        }


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc/PID/task/TID/children."""
    found, frontier = [root], [root]
    while frontier:
        for task in Path(f"/proc/{frontier.pop()}/task").glob("*/children"):
            try:
                children = [int(v) for v in task.read_text().split()]
            except OSError:
                continue
            for pid in children:
                if pid not in found:
                    found.append(pid)
                    frontier.append(pid)
    return found


def memory_mib(pids: list[int], field: str) -> float | None:
    """Sum of a /proc/PID/status memory field (VmRSS, VmHWM) over ``pids``, MiB. Pages the
    processes share (a forked engine's libraries) count once per process."""
    kib, seen = 0, False
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(rf"^{field}:\s+(\d+)", status, re.MULTILINE)
        if found:
            kib, seen = kib + int(found.group(1)), True
    return round(kib / 1024) if seen else None


def _start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot; tells a reused pid apart)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def cpu_list() -> str:
    """The cores this process may run on, as ``0-1`` or ``0-3,6``: vLLM's worker binds its
    OpenMP threads to these (by default it pins itself to core 0 alone)."""
    ranges: list[list[int]] = []
    for cpu in sorted(os.sched_getaffinity(0)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME=ENV1=V1,ENV2=V2`` -> ("vlm-gateway NAME", {ENV1: V1, ENV2: V2}); a NAME that
    starts with ``vlm-gateway`` is kept as it is."""
    name, sep, rest = spec.partition("=")
    env = dict(kv.split("=", 1) for kv in rest.split(",") if "=" in kv)
    if not sep or not name.strip() or not env:
        raise ValueError(f"--gateway-variant {spec!r}: expected NAME=ENV1=V1[,ENV2=V2...]")
    name = name.strip()
    if not name.startswith(GATEWAY):
        name = f"{GATEWAY} {name}"
    return name, env


def _bin(name: str) -> str:
    """A console script of the interpreter running this benchmark (its virtualenv)."""
    return str(Path(sys.executable).parent / name)


def _flags(port: int, dtype: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--dtype", dtype]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def _gateway(name: str, args: argparse.Namespace, logs: Path, env: dict[str, str]) -> Target:
    model = str(args.model)

    def launch() -> ServerProcess:
        port = free_port()
        argv = [_bin("vlm-gateway"), "serve", "--model", model, *_flags(port, args.dtype)]
        url = f"http://127.0.0.1:{port}"
        return ServerProcess(name, argv, url, logs / f"{_slug(name)}.log", "/ready", env=env)

    return Target(name, model, launch=launch, dtype=args.dtype, env=env)


def _transformers(args: argparse.Namespace, logs: Path) -> Target:
    model = str(args.model)

    def launch() -> ServerProcess:
        port = free_port()
        argv = [_bin("transformers"), "serve", model, "--device", "cpu", *_flags(port, args.dtype)]
        url = f"http://127.0.0.1:{port}"
        # The pinned model is loaded before uvicorn starts listening: /health means ready.
        return ServerProcess(TRANSFORMERS, argv, url, logs / "transformers_serve.log", "/health")

    return Target(TRANSFORMERS, model, launch=launch, dtype=args.dtype)


def _vllm(args: argparse.Namespace, logs: Path) -> Target:
    model = str(args.model)
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_gib),
        "VLLM_CPU_OMP_THREADS_BIND": cpu_list(),
    }

    def launch() -> ServerProcess:
        port = free_port()
        argv = [
            str(args.vllm_venv / "bin" / "vllm"), "serve", model,
            *_flags(port, args.vllm_dtype), "--max-model-len", "4096", "--enforce-eager",
            "--served-model-name", model,
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        return ServerProcess(VLLM, argv, url, logs / "vllm.log", "/health", env=env)

    return Target(VLLM, model, launch=launch, dtype=args.vllm_dtype, env=env)


def plan_targets(args: argparse.Namespace, logs: Path) -> list[Target]:
    """The servers in the order they are measured; none is started yet."""
    model = str(args.model)
    env = dict(kv.split("=", 1) for kv in args.gateway_env)
    targets = [
        Target(GATEWAY, model, base_url=args.gateway_url, env=env)
        if args.gateway_url
        else _gateway(GATEWAY, args, logs, env)
    ]
    for spec in args.gateway_variant:
        name, variant_env = parse_variant(spec)
        targets.append(_gateway(name, args, logs, variant_env))
    if not args.no_peer:
        peer = Target(TRANSFORMERS, model, base_url=args.peer_url) if args.peer_url else None
        targets.append(peer or _transformers(args, logs))
    if args.vllm_url or args.vllm_venv:
        vllm = Target(VLLM, model, base_url=args.vllm_url) if args.vllm_url else None
        targets.append(vllm or _vllm(args, logs))
    return targets
