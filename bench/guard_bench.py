"""Image guard timings: a 4000x3000 JPEG, a 1024x768 PNG, and the decompression-bomb refusal.

Run: ``.venv/bin/python bench/guard_bench.py [--runs N]``. Everything is in-process (data URLs),
so the figures are the guard's own cost: base64 decode, sniff, header probe, decode, RGB,
resize, digest. The bomb is measured first, in a fresh process, so that peak RSS (``ru_maxrss``)
shows whether anything was allocated for its 2.5 gigapixels.

Acceptance (issue 3): the 50000x50000 PNG is refused in under 50 ms with memory unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import resource
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from adapters.base import Capabilities
from gateway.errors import ImageTooLarge
from gateway.guard import GuardConfig, ImageGuard, ImageRef

PARAM = "messages[0].content[0].image_url"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def bomb_png(side: int) -> bytes:
    """A PNG whose header claims side x side RGB and whose IDAT is valid zlib of zeros (the
    real shape of a bomb: gigabytes of pixels in a few kilobytes)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (8 * 1024 * 1024), 9)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def photo(size: tuple[int, int], fmt: str, **save: object) -> bytes:
    noise = Image.effect_noise(size, 64).convert("RGB")
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    Image.blend(noise, gradient, 0.5).save(buf, fmt, **save)
    return buf.getvalue()


def url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def time_prepare(guard: ImageGuard, ref: ImageRef, runs: int) -> tuple[list[float], str]:
    times = []
    summary = ""
    for _ in range(runs):
        started = time.perf_counter()
        (prepared,) = await guard.prepare([ref])
        times.append(time.perf_counter() - started)
        r = prepared.report
        summary = (
            f"{r.original_size[0]}x{r.original_size[1]} {r.format} {r.bytes} B -> "
            f"{r.model_size[0]}x{r.model_size[1]}, {r.visual_tokens} tokens, "
            f"warnings={list(r.warnings)}"
        )
    return times, summary


def fmt_ms(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(times) * 1e3:7.1f} ms  p90 {p90 * 1e3:7.1f} ms"


async def main(runs: int) -> None:
    guard = ImageGuard(GuardConfig(), Capabilities("qwen3-vl-2b-instruct"))
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.machine()}, {cpus} usable cpus, Python {platform.python_version()}")
    print(f"Pillow {Image.__version__}; runs per case: {runs}")

    # 1. The bomb, before anything big was allocated in this process.
    bomb = ImageRef(url(bomb_png(50_000), "image/png"), "auto", PARAM)
    await guard.prepare([ImageRef(url(photo((64, 48), "PNG"), "image/png"), "auto", PARAM)])
    rss_before = peak_rss_mib()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            await guard.prepare([bomb])
        except ImageTooLarge:
            times.append(time.perf_counter() - started)
        else:
            raise SystemExit("the bomb was accepted")
    grew = peak_rss_mib() - rss_before
    size = len(bomb.url) / 1e3
    print(f"50000x50000 PNG bomb ({size:.1f} kB data URL) refused: {fmt_ms(times)}")
    print(f"  slowest {max(times) * 1e3:.1f} ms; peak RSS grew {grew:.1f} MiB")

    # 2. The two reference images.
    jpeg = photo((4000, 3000), "JPEG", quality=90)
    png = photo((1024, 768), "PNG")
    cases = [
        ("4000x3000 JPEG, detail=auto", ImageRef(url(jpeg, "image/jpeg"), "auto", PARAM)),
        ("4000x3000 JPEG, detail=high", ImageRef(url(jpeg, "image/jpeg"), "high", PARAM)),
        ("1024x768 PNG,   detail=auto", ImageRef(url(png, "image/png"), "auto", PARAM)),
    ]
    for name, ref in cases:
        await guard.prepare([ref])  # warm-up
        times, summary = await time_prepare(guard, ref, runs)
        print(f"{name}: {fmt_ms(times)}   [{summary}]")
    print(f"peak RSS of the process: {peak_rss_mib():.0f} MiB")
    await guard.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
