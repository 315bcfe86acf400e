"""A front gateway whose only backend is a pool of three real ``vlm-gateway serve`` replicas
(tiny random Qwen3-VL, one generation slot each) on loopback: affinity keeps a conversation on
one replica (its caches are hit there only), a slow replica's keys spill to the others, and a
killed replica is ejected while its requests succeed elsewhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

MODEL = "pool-vlm"
LONG = "Write a long essay."  # greedy, the tiny model runs this to max_tokens


@pytest.fixture(scope="module")
def replicas(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    logs = tmp_path_factory.mktemp("replicas")
    # One slot each: a replica busy with one generation would make a second one wait.
    servers = [
        Server(tiny_model_dir, logs / f"replica{i}.log", VLM_GATEWAY_SERVER__MAX_CONCURRENT="1")
        for i in range(3)
    ]
    try:
        for server in servers:  # they load at the same time
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def front(
    replicas: list[Server], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    where = tmp_path_factory.mktemp("front")
    roots = ", ".join(f'"{s.base_url}/v1"' for s in replicas)
    (where / "routing.toml").write_text(
        f"""
[backends.pool]
profile = "qwen3-vl-2b-instruct"
names = ["{MODEL}"]
[backends.pool.upstream]
model = "{tiny_model_dir}"
replicas = [{roots}]
timeout_s = 60
connect_timeout_s = 2
probe_interval_s = 0.3
eject_after = 2
""",
        encoding="utf-8",
    )
    # No local backend: --model (passed by Server) is not loaded.
    server = Server(
        tiny_model_dir,
        where / "front.log",
        VLM_GATEWAY_ROUTER__ROUTING_FILE=str(where / "routing.toml"),
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def scrape(server: Server, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.base_url}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def requests(servers: list[Server]) -> list[float]:
    return [await scrape(s, "vlm_gateway_requests_total") for s in servers]


async def ask(front: Server, messages: list[dict[str, Any]], max_tokens: int = 2) -> str:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{front.base_url}/v1/chat/completions",
            json={"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0},
        )
    assert response.status_code == 200, response.text
    answer: str = response.json()["choices"][0]["message"]["content"]
    return answer


def with_image(seed: int, text: str) -> list[dict[str, Any]]:
    picture = {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256, seed))}}
    return [{"role": "user", "content": [picture, {"type": "text", "text": text}]}]


def delta(before: list[float], after: list[float]) -> list[float]:
    return [b - a for a, b in zip(before, after, strict=True)]


async def served(servers: list[Server], before: list[float], total: int) -> list[float]:
    """Requests each replica served since ``before``, once ``total`` are counted (a replica
    counts a request after its response is sent, so just after the client has it)."""
    for _ in range(50):
        counts = delta(before, await requests(servers))
        if sum(counts) >= total:
            return counts
        await asyncio.sleep(0.1)
    raise AssertionError(f"the replicas counted {counts}, not {total} requests")


async def test_a_conversation_stays_on_one_replica(front: Server, replicas: list[Server]) -> None:
    before = await requests(replicas)
    hits_before = [await scrape(s, "vlm_gateway_cache_hits_total") for s in replicas]
    messages = with_image(7, "What does the picture show?")
    for turn in ("And the colours?", "Thanks. Anything else?"):
        answer = await ask(front, messages)
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": turn}]
    await ask(front, messages)
    counts = await served(replicas, before, 3)
    assert sorted(counts) == [0, 0, 3], counts
    home = counts.index(3)
    hits = delta(hits_before, [await scrape(s, "vlm_gateway_cache_hits_total") for s in replicas])
    assert hits[home] >= 2, hits  # later turns reuse the image's work on its replica
    # Other images own other parts of the ring.
    before = await requests(replicas)
    for seed in range(20, 28):
        await ask(front, with_image(seed, "Describe."), max_tokens=1)
    assert sum(1 for c in await served(replicas, before, 8) if c) >= 2


async def test_a_busy_replica_does_not_hold_its_keys_back(
    front: Server, replicas: list[Server]
) -> None:
    messages = [{"role": "user", "content": LONG}]
    before = await requests(replicas)
    await ask(front, messages, max_tokens=1)
    home = (await served(replicas, before, 1)).index(1)
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 20_000,
        "temperature": 0,
        "stream": True,
    }
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{front.base_url}/v1/chat/completions", json=body) as long,
    ):
        assert long.status_code == 200
        lines = long.aiter_lines()
        while "content" not in await anext(lines):
            pass  # the long generation is running on its replica, in its one slot
        assert await scrape(replicas[home], "vlm_gateway_in_flight_requests") == 1
        before = await requests(replicas)
        started = time.monotonic()
        await ask(front, messages, max_tokens=1)  # same key: it would wait behind the essay
        assert time.monotonic() - started < 10
        counts = await served(replicas, before, 1)
        assert counts[home] == 0, counts
    spills = await scrape(front, "vlm_gateway_pool_affinity_spills_total")
    assert spills >= 1


async def test_a_killed_replica_is_ejected_and_its_requests_succeed_elsewhere(
    front: Server, replicas: list[Server]
) -> None:
    messages = with_image(9, "What is this?")
    before = await requests(replicas)
    await ask(front, messages)
    home = (await served(replicas, before, 1)).index(1)
    victim = replicas[home]
    label = f"127.0.0.1:{victim.port}"
    victim.process.kill()
    victim.process.wait(10)
    for _ in range(3):  # refused at once, retried on the next replica: no error reaches us
        await ask(front, messages)
    deadline = time.monotonic() + 10
    while await scrape(front, "vlm_gateway_pool_replica_healthy", replica=label) != 0:
        assert time.monotonic() < deadline, "the killed replica was not ejected"
        await asyncio.sleep(0.1)
    assert await scrape(front, "vlm_gateway_pool_ejections_total", replica=label) >= 1
    tried = await scrape(front, "vlm_gateway_pool_requests_total", replica=label)
    await ask(front, messages)
    assert await scrape(front, "vlm_gateway_pool_requests_total", replica=label) == tried
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{front.base_url}/ready")).status_code == 200
