"""Helpers shared by the benchmark scripts: machine facts, server processes, synthetic images,
percentiles and report rendering. The CPU-load discipline (``LoadSampler``, ``busy_pct``,
``wait_for_quiet``) lives in ``bench/_load.py`` and is re-exported here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from bench._load import LoadSampler, busy_pct, wait_for_quiet

__all__ = (
    "LoadSampler",
    "ServerProcess",
    "busy_pct",
    "data_url",
    "free_port",
    "machine_info",
    "markdown_table",
    "pct",
    "synthetic_image",
    "wait_for_quiet",
    "write_results",
)

REPO = Path(__file__).resolve().parent.parent
_DECISIVE_FLAGS = frozenset(
    {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory and the versions that decide the figures."""
    model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        # The flags that decide which kernels torch takes (bf16 fast only with AMX/avx512_bf16).
        "cpu_flags": sorted(flags & _DECISIVE_FLAGS),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    for name in ("torch", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server command on a loopback port, its output in a log file, ready when ``ready_path``
    answers 200. ``stop`` terminates it (SIGTERM, then SIGKILL after 20 s)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        base_url: str,
        log_path: Path,
        ready_path: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.base_url = base_url
        self.log_path = log_path
        self.ready_path = ready_path
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VLM_GATEWAY_")}
        environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        environ.update(env or {})
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.command = shlex.join(self.argv)
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=environ, cwd=REPO
        )

    def wait_ready(self, timeout_s: float = 600.0) -> float:
        """Seconds until ready; raises with the log tail when the process exits or times out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready in {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic picture (gradient, shapes, text strokes); distinct for each seed, so a
    cache keyed on pixels never mistakes two requests' images for one."""
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image = Image.blend(gradient, Image.new("RGB", (width, height), _colour(seed)), 0.6)
    draw = ImageDraw.Draw(image)
    for k in range(12):
        c = _colour(seed * 31 + k)
        x0 = (seed * 97 + k * 131) % max(1, width - width // 4)
        y0 = (seed * 53 + k * 71) % max(1, height - height // 4)
        box = (x0, y0, x0 + width // (4 + k % 3), y0 + height // (4 + k % 4))
        (draw.rectangle if k % 2 else draw.ellipse)(box, fill=c)
    draw.text((16, height - 40), f"benchmark image {seed}", fill=(0, 0, 0))
    return image


def _colour(seed: int) -> tuple[int, int, int]:
    return ((seed * 67) % 256, (seed * 151 + 80) % 256, (seed * 211 + 160) % 256)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(stem: Path, data: Mapping[str, Any], markdown: str) -> None:
    """Write ``stem.json`` and ``stem.md`` (the directory is created)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    stem.with_suffix(".md").write_text(markdown.rstrip() + "\n")
