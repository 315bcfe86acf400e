"""The caches through the real server: a follow-up turn about the same image reuses work, says
so in ``usage.prompt_tokens_details.cached_tokens`` and in the cache metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration


def cache_counters(server: Server) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {
        (sample.name, sample.labels.get("cache", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("vlm_gateway_cache_")
    }


def test_follow_up_turn_reuses_the_image_and_the_prefix(
    server: Server, tiny_model_dir: Path
) -> None:
    image = data_url(make_image(320, 256, seed=42))
    turn1: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "What shapes do you see?"},
            ],
        },
    ]
    url = f"{server.base_url}/v1/chat/completions"
    params = {"model": str(tiny_model_dir), "max_tokens": 6, "temperature": 0}
    first = httpx.post(url, json={**params, "messages": turn1}, timeout=60).json()
    before = cache_counters(server)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And what colours are they?"},
    ]
    second = httpx.post(url, json={**params, "messages": turn2}, timeout=60).json()
    after = cache_counters(server)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The whole first turn (with its 80 image tokens) is a prefix of the second.
    assert cached >= 80
    assert cached < second["usage"]["prompt_tokens"]
    hits = sum(
        after.get((name, c), 0) - before.get((name, c), 0)
        for name in ("vlm_gateway_cache_hits_total",)
        for c in ("embedding", "prefix")
    )
    assert hits >= 1
    assert after[("vlm_gateway_cache_bytes", "prefix")] > 0


def samples(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_miss_then_hit_and_every_model_stage_observed(server: Server, tiny_model_dir: Path) -> None:
    """A new image misses the embedding cache once; asking again about it (in a new
    conversation, so no prefix is shared) hits. Each request observes every model stage."""
    image = data_url(make_image(352, 288, seed=77))
    url = f"{server.base_url}/v1/chat/completions"

    def ask(question: str) -> None:
        content = [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": image}},
        ]
        body = {
            "model": str(tiny_model_dir),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 3,
        }
        assert httpx.post(url, json=body, timeout=60).status_code == 200

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    before = samples(server)
    ask("Which shapes are there?")
    after = samples(server)
    assert delta("vlm_gateway_cache_misses_total", cache="embedding") == 1
    assert delta("vlm_gateway_cache_hits_total", cache="embedding") == 0
    model = str(tiny_model_dir)
    for stage in ("image_fetch", "image_decode", "vision_encode", "prefill", "decode"):
        count = "vlm_gateway_stage_duration_seconds_count"
        assert delta(count, model=model, stage=stage) == 1, stage
    before = after
    ask("Count the shapes, please.")
    after = samples(server)
    assert delta("vlm_gateway_cache_hits_total", cache="embedding") == 1
    assert delta("vlm_gateway_cache_misses_total", cache="embedding") == 0
