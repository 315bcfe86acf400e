"""Soak: a real server under mixed valid and invalid traffic for a long time; resources stay flat.

Run: ``.venv/bin/python bench/soak.py [--minutes 30] [--concurrency 4]``. It builds the tiny
random model, starts ``vlm-gateway serve`` on a loopback port and sends, in ``--concurrency``
loops until the time is up: text and image requests (JSON and streamed), streams abandoned after
their first chunk (client disconnects), and bad input (malformed JSON, a non-JSON content type, a
corrupt and an oversized image, too many images, an unknown model, an over-long pattern). Every
minute it samples the server process: resident memory, open file descriptors, threads, and the
caches' bytes from ``/metrics``. It writes ``bench/results/soak.md`` and ``.json`` with the
samples and the counts of every outcome; any 5xx is a failure and is reported.

Flat means: after the first minutes' warm-up (allocator arenas, caches filling to their bounds),
memory, file descriptors and threads stop growing; the caches never exceed their byte bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    ServerProcess,
    data_url,
    free_port,
    machine_info,
    markdown_table,
    synthetic_image,
    write_results,
)

URL = "/v1/chat/completions"


def process_facts(pid: int) -> dict[str, float]:
    """Resident MiB, open descriptors and threads of ``pid`` (from /proc)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "open_fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "threads": int(fields["Threads"]),
    }


async def cache_bytes(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    out = {}
    for line in text.splitlines():
        if line.startswith("vlm_gateway_cache_bytes{"):
            name = line.split('cache="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


class Traffic:
    """The request mix; each call sends one request and returns its outcome label."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.images = [data_url(synthetic_image(320 + 32 * i, 256, seed=i)) for i in range(6)]
        self.kinds = [
            self.text, self.image, self.stream, self.abandon, self.image,
            self.bad_json, self.not_json, self.corrupt_image, self.too_many_images,
            self.unknown_model, self.bad_pattern, self.huge_image,
        ]  # fmt: skip

    def body(self, content: Any, **fields: Any) -> dict[str, Any]:
        message = {"role": "user", "content": content}
        return {"model": self.model, "messages": [message], "max_tokens": 8, **fields}

    def image_content(self, url: str, text: str = "What is in the picture?") -> list[Any]:
        return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]

    async def text(self, client: httpx.AsyncClient) -> str:
        r = await client.post(URL, json=self.body(f"Say something about {random.random()}"))
        return f"text {r.status_code}"

    async def image(self, client: httpx.AsyncClient) -> str:
        r = await client.post(URL, json=self.body(self.image_content(random.choice(self.images))))
        return f"image {r.status_code}"

    async def stream(self, client: httpx.AsyncClient) -> str:
        body = self.body("Tell me a story.", stream=True)
        async with client.stream("POST", URL, json=body) as r:
            async for _ in r.aiter_lines():
                pass
        return f"stream {r.status_code}"

    async def abandon(self, client: httpx.AsyncClient) -> str:
        body = self.body("Write a long essay.", stream=True, max_tokens=2000)
        async with client.stream("POST", URL, json=body) as r:
            async for _ in r.aiter_lines():
                break  # hang up after the first line: the server must stop generating
        return f"abandoned stream {r.status_code}"

    async def bad_json(self, client: httpx.AsyncClient) -> str:
        r = await client.post(
            URL, content=b'{"model": [', headers={"content-type": "application/json"}
        )
        return f"bad json {r.status_code}"

    async def not_json(self, client: httpx.AsyncClient) -> str:
        r = await client.post(URL, content=b"{}", headers={"content-type": "text/plain"})
        return f"text/plain body {r.status_code}"

    async def corrupt_image(self, client: httpx.AsyncClient) -> str:
        raw = base64.b64decode(self.images[0].split(",", 1)[1])[:200]
        url = "data:image/png;base64," + base64.b64encode(raw).decode()
        r = await client.post(URL, json=self.body(self.image_content(url)))
        return f"truncated image {r.status_code}"

    async def too_many_images(self, client: httpx.AsyncClient) -> str:
        content = [{"type": "image_url", "image_url": {"url": self.images[0]}}] * 40
        r = await client.post(URL, json=self.body(content))
        return f"too many images {r.status_code}"

    async def unknown_model(self, client: httpx.AsyncClient) -> str:
        r = await client.post(URL, json={**self.body("hi"), "model": f"m{random.random()}"})
        return f"unknown model {r.status_code}"

    async def bad_pattern(self, client: httpx.AsyncClient) -> str:
        schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "b{20000}"}}}
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        r = await client.post(URL, json=self.body("hi", response_format=fmt))
        return f"costly pattern {r.status_code}"

    async def huge_image(self, client: httpx.AsyncClient) -> str:
        url = "data:image/png;base64," + "A" * 30_000_000
        r = await client.post(URL, json=self.body(self.image_content(url)))
        return f"oversized image {r.status_code}"


async def run(base_url: str, pid: int, model: str, minutes: float, loops: int) -> dict[str, Any]:
    traffic = Traffic(model)
    outcomes: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + minutes * 60
    started = time.monotonic()
    limits = httpx.Limits(max_connections=loops + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def sample() -> None:
            facts = process_facts(pid)
            caches = await cache_bytes(client)
            minute = round((time.monotonic() - started) / 60, 1)
            samples.append(
                {
                    "minute": minute,
                    **facts,
                    **{f"{k}_cache_mib": round(v / 2**20, 2) for k, v in caches.items()},
                }
            )
            print(samples[-1], dict(outcomes.most_common(4)), flush=True)

        async def loop(i: int) -> None:
            kinds = itertools.cycle(traffic.kinds[i % len(traffic.kinds) :] + traffic.kinds)
            while time.monotonic() < deadline:
                try:
                    outcomes[await next(kinds)(client)] += 1
                except httpx.HTTPError as exc:
                    outcomes[f"client error {type(exc).__name__}"] += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await sample()
                await asyncio.sleep(min(60.0, max(0.0, deadline - time.monotonic())))

        await asyncio.gather(sampler(), *(loop(i) for i in range(loops)))
        await asyncio.sleep(2)  # let abandoned generations wind down
        await sample()
    return {"outcomes": dict(outcomes), "samples": samples}


def report(result: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    """The markdown report: first, warmed-up (minute 1) and last samples, with resident memory
    net of the caches (which grow by design up to their byte bounds), and the outcomes."""
    samples = result["samples"]
    for s in samples:
        caches = sum(v for k, v in s.items() if k.endswith("_cache_mib"))
        s["rss_minus_caches_mib"] = round(s["rss_mib"] - caches, 1)
    columns = [k for k in samples[0] if k != "minute"]
    picked = [samples[0], samples[min(1, len(samples) - 1)], samples[-1]]
    rows = [[s["minute"], *(s.get(c) for c in columns)] for s in picked]
    outcome_rows = sorted(result["outcomes"].items())
    server_errors = sum(n for k, n in outcome_rows if k.rsplit(" ", 1)[-1].startswith("5"))
    flags = ", ".join(machine["cpu_flags"]) or "none of note"
    return (
        f"# Soak\n\nCommand: `{command}`. Machine: {machine['cpu']}, {machine['cores']} cores "
        f"(flags: {flags}); {machine['date_utc']} UTC.\n\n"
        "Server process at the start, after the first minute (warm-up) and at the end:\n\n"
        + markdown_table(["minute", *columns], rows)
        + f"\n\nRequests by outcome ({sum(result['outcomes'].values())} in all, "
        f"{server_errors} with a 5xx status):\n\n"
        + markdown_table(["outcome", "count"], outcome_rows)
        + "\n"
    )


def rerender(stem: Path) -> None:
    """Write ``stem.md`` again from ``stem.json`` (after a change to the report's layout)."""
    import json

    data = json.loads(stem.with_suffix(".json").read_text())
    text = report(data, data["machine"], data["command"])
    write_results(stem, data, text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak")
    parser.add_argument(
        "--rerender", action="store_true", help="rewrite --out's .md from its .json"
    )
    args = parser.parse_args()
    if args.rerender:
        rerender(args.out)
        return
    from adapters.testing.models import build_test_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_test_model(Path(tmp) / "tiny", "tiny")
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--dtype",
            "float32",
        ]
        server = ServerProcess(
            "vlm-gateway", argv, f"http://127.0.0.1:{port}", Path(tmp) / "server.log", "/ready"
        )
        try:
            server.wait_ready()
            result = asyncio.run(
                run(server.base_url, server.process.pid, str(model), args.minutes, args.concurrency)
            )
        finally:
            server.stop()
    command = "python bench/soak.py " + shlex.join(sys.argv[1:])
    machine = machine_info()
    text = report(result, machine, command)
    write_results(args.out, {"machine": machine, "command": command, **result}, text)
    print(text)


if __name__ == "__main__":
    main()
