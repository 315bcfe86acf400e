"""Multi-turn TTFT with the embedding and prefix caches off, embedding cache only, and both on.

Run: ``.venv/bin/python bench/multiturn_bench.py --model /tmp/vlm-2b`` (build the model first
with ``.venv/bin/vlm-gateway make-test-model /tmp/vlm-2b --size 2b``).

A 3-turn conversation about one 1024x768 image (768 visual tokens), the same three questions in
every pass, greedy decoding, ``--tokens`` new tokens a turn. One model is loaded once and drives
every pass through ``LocalVLMAdapter.stream`` (in process, the adapter's per-request cache
policy selects the caches; the caches are emptied between passes), so the passes differ only in
what is reused. Each turn's answer becomes the next turn's assistant message.

TTFT is the wall time from calling ``stream`` until the first token was computed: the time the
``Finish`` event arrived minus the decode time it reports (first to last token). It includes
prompt building, image preprocessing, the vision encoder, the prefix copy and the prefill; it
does not include HTTP. The first streamed text chunk (``first_text``) can lag the first token by a
decode step when a token ends inside a UTF-8 character.

Before the passes one uncached turn warms the kernels for these shapes (the first large-image
call in a process is slower). ``--repeats N`` runs every pass N times (caches emptied each
time) and reports the median TTFT per turn.

Acceptance (issue 5): turn-2 TTFT with both caches is at most 0.15 of turn-2 TTFT without caches
(the embedding cache alone about 0.35).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from adapters.base import Delta, Finish, GenerationRequest, ImageInput, Message, SamplingParams
from adapters.local import ALL_CACHES, CACHES_OFF, CachePolicy, LocalModelConfig, LocalVLMAdapter

QUESTIONS = (
    "Describe this picture in one sentence.",
    "Which colours dominate it?",
    "Is there any text in it, and what does it say?",
)
PASSES = {
    "off": CACHES_OFF,
    "embedding": CachePolicy(embedding=True, prefix=False),
    "on": ALL_CACHES,
}


@dataclass(frozen=True)
class Turn:
    ttft: float
    first_text: float
    total: float
    timings: dict[str, float]
    prompt_tokens: int
    cached_tokens: int
    text: str


def picture(width: int, height: int) -> ImageInput:
    """A deterministic chart-like picture (shapes, lines, text)."""
    image = Image.new("RGB", (width, height), (250, 246, 236))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x = 60 + i * (width - 120) // 12
        top = height - 80 - (i * 37 % 11 + 2) * (height - 200) // 14
        draw.rectangle((x, top, x + (width - 120) // 16, height - 80), fill=(30 + 18 * i, 90, 200))
    draw.line((40, height - 80, width - 40, height - 80), fill=(0, 0, 0), width=3)
    draw.ellipse((width - 260, 40, width - 60, 240), fill=(220, 60, 40))
    draw.text((60, 30), "Quarterly revenue, vlm-gateway benchmark", fill=(0, 0, 0))
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    return ImageInput(image, digest=f"{digest}:{width}x{height}")


async def turn(
    adapter: LocalVLMAdapter, messages: list[Message], tokens: int, caches: CachePolicy
) -> Turn:
    request = GenerationRequest(
        tuple(messages), SamplingParams(max_tokens=tokens, temperature=0.0), request_id="bench"
    )
    start = time.perf_counter()
    first_text = 0.0
    parts: list[str] = []
    async for event in adapter.stream(request, caches=caches):
        now = time.perf_counter() - start
        if isinstance(event, Delta):
            first_text = first_text or now
            parts.append(event.text)
        elif isinstance(event, Finish):
            return Turn(
                ttft=now - event.timings.get("decode", 0.0),
                first_text=first_text or now,
                total=now,
                timings=event.timings,
                prompt_tokens=event.usage.prompt_tokens,
                cached_tokens=event.usage.cached_tokens,
                text="".join(parts),
            )
    raise RuntimeError("stream ended without Finish")


async def conversation(
    adapter: LocalVLMAdapter, image: ImageInput, tokens: int, caches: CachePolicy
) -> list[Turn]:
    messages: list[Message] = []
    turns: list[Turn] = []
    for i, question in enumerate(QUESTIONS):
        content = (image, question) if i == 0 else (question,)
        messages.append(Message("user", content))
        done = await turn(adapter, messages, tokens, caches)
        turns.append(done)
        messages.append(Message("assistant", (done.text,)))
    return turns


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


async def main(
    model: str, tokens: int, width: int, height: int, passes: list[str], repeats: int
) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; load average {load()}")
    adapter = LocalVLMAdapter(LocalModelConfig(model=model))
    started = time.perf_counter()
    await adapter.start()
    print(f"model {model} loaded and warmed up in {time.perf_counter() - started:.1f} s")
    image = picture(*adapter.capabilities.fit(width, height))
    print(f"image {image.size[0]}x{image.size[1]}, {tokens} new tokens a turn, greedy")
    warm = await turn(adapter, [Message("user", (image, QUESTIONS[0]))], tokens, CACHES_OFF)
    print(f"warm-up turn (not counted): TTFT {warm.ttft:.2f} s")
    runs: dict[str, list[list[Turn]]] = {name: [] for name in passes}
    try:
        for repeat in range(1, repeats + 1):
            for name in passes:
                adapter.clear_caches()
                turns = await conversation(adapter, image, tokens, PASSES[name])
                runs[name].append(turns)
                for i, t in enumerate(turns, 1):
                    parts = " ".join(f"{k}={v:.2f}" for k, v in sorted(t.timings.items()))
                    print(
                        f"#{repeat} {name:>9} turn {i}: TTFT {t.ttft:6.2f} s  first text"
                        f" {t.first_text:6.2f} s  total {t.total:6.2f} s  prompt"
                        f" {t.prompt_tokens} cached {t.cached_tokens}  [{parts}]"
                    )
        stats = adapter.cache_stats()
    finally:
        await adapter.aclose()
    ttft = {
        name: [statistics.median(r[i].ttft for r in results) for i in range(len(QUESTIONS))]
        for name, results in runs.items()
    }
    for name, medians in ttft.items():
        figures = "  ".join(f"turn {i}: {v:.2f} s" for i, v in enumerate(medians, 1))
        print(f"median TTFT {name:>9}  {figures}")
    if "off" in ttft:
        for name in (n for n in passes if n != "off"):
            ratios = "  ".join(
                f"turn {i}: {t / b:.3f}"
                for i, (t, b) in enumerate(zip(ttft[name], ttft["off"], strict=True), 1)
            )
            print(f"TTFT ratio {name}/off  {ratios}")
    texts = [[t.text for t in turns] for results in runs.values() for turns in results]
    print(f"answers identical across passes: {all(t == texts[0] for t in texts)}")
    for name, s in stats.items():
        print(
            f"{name} cache: hits {s.hits} misses {s.misses} evictions {s.evictions} "
            f"bytes {s.bytes_used / 2**20:.1f} MiB entries {s.entries}"
        )
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/vlm-2b")
    parser.add_argument("--tokens", type=int, default=12, help="new tokens per turn")
    parser.add_argument("--size", default="1024x768", help="image WIDTHxHEIGHT")
    parser.add_argument(
        "--passes", default="off,embedding,on", help="comma list of off, embedding, on"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of every pass (median)")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    asyncio.run(main(args.model, args.tokens, w, h, args.passes.split(","), args.repeats))
