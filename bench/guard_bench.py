"""Image guard timings: a 4000x3000 JPEG, a 1024x768 PNG, and the decompression-bomb refusal.

Run: ``.venv/bin/python bench/guard_bench.py [--runs N]``; writes ``bench/results/guard_bench.md``
and ``.json`` (``--out`` to write elsewhere). Everything is in-process (data URLs),
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
import resource
import shlex
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from adapters.base import Capabilities
from bench._common import REPO, machine_info, markdown_table, write_results
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


def stats_ms(times: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return statistics.median(times) * 1e3, p90 * 1e3


async def main(runs: int, out: Path) -> None:
    guard = ImageGuard(GuardConfig(), Capabilities("qwen3-vl-2b-instruct"))
    machine = {**machine_info(), "pillow": Image.__version__}
    rows: list[list[object]] = []
    samples: dict[str, list[float]] = {}

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
    name = "50000x50000 PNG header (decompression bomb), refused"
    rows.append([name, *stats_ms(times), f"peak RSS grew {grew:.1f} MiB"])
    samples[name] = times

    # 2. The two reference images.
    jpeg = photo((4000, 3000), "JPEG", quality=90)
    png = photo((1024, 768), "PNG")
    cases = [
        ("4000x3000 JPEG, detail=auto", ImageRef(url(jpeg, "image/jpeg"), "auto", PARAM)),
        ("4000x3000 JPEG, detail=high", ImageRef(url(jpeg, "image/jpeg"), "high", PARAM)),
        ("1024x768 PNG, detail=auto", ImageRef(url(png, "image/png"), "auto", PARAM)),
    ]
    for name, ref in cases:
        await guard.prepare([ref])  # warm-up
        times, summary = await time_prepare(guard, ref, runs)
        rows.append([name, *stats_ms(times), summary])
        samples[name] = times
    await guard.aclose()
    command = "python bench/guard_bench.py " + shlex.join(sys.argv[1:])
    flags = ", ".join(machine["cpu_flags"]) or "none of note"
    table = markdown_table(["input", "median ms", "p90 ms", "result"], rows)
    report = (
        f"# Image guard timings\n\nCommand: `{command}`. Machine: {machine['cpu']}, "
        f"{machine['cores']} cores (flags: {flags}), Python {machine['python']}, "
        f"Pillow {machine['pillow']}; {machine['date_utc']} UTC; {runs} runs per input.\n\n"
        f"{table}\n"
    )
    write_results(out, {"machine": machine, "command": command, "samples_s": samples}, report)
    print(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "guard_bench")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.out))
