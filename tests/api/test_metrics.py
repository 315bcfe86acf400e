"""Scrape ``/metrics`` around known requests and assert exact deltas."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from tests.api.conftest import (
    MODEL,
    ClientFactory,
    build_app,
    http_client,
    running,
    stream_then_disconnect,
)
from tests.support import data_url, make_image

URL = "/v1/chat/completions"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def image_request(**fields: Any) -> dict[str, Any]:
    content = [
        {"type": "text", "text": "Describe this picture."},
        {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
    ]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


async def test_successful_image_request(fake: tuple[httpx.AsyncClient, FakeAdapter]) -> None:
    client, adapter = fake
    adapter.enqueue("one two three four")
    before = await scrape(client)
    response = await client.post(URL, json=image_request())
    usage = response.json()["usage"]
    after = await scrape(client)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    request = {"model": MODEL, "task": "describe", "backend": "local", "outcome": "success"}
    assert d("vlm_gateway_requests_total", **request) == 1
    assert d("vlm_gateway_prompt_tokens_total", model=MODEL) == usage["prompt_tokens"]
    assert d("vlm_gateway_completion_tokens_total", model=MODEL) == 4
    assert d("vlm_gateway_image_tokens_total", model=MODEL) == 80
    assert d("vlm_gateway_images_total", source="data") == 1
    assert d("vlm_gateway_image_bytes_total", source="data") > 0
    assert d("vlm_gateway_router_actions_total", task="describe", action="proceed") == 1
    for stage in ("image_fetch", "image_decode"):
        assert d("vlm_gateway_stage_duration_seconds_count", model=MODEL, stage=stage) == 1
    assert d("vlm_gateway_time_to_first_token_seconds_count", model=MODEL) == 1
    assert d("vlm_gateway_queue_wait_seconds_count", model=MODEL) == 1
    assert d("vlm_gateway_request_duration_seconds_count", model=MODEL, task="describe") == 1
    assert after[("vlm_gateway_in_flight_requests", frozenset())] == 0
    assert after[("vlm_gateway_queue_depth", frozenset())] == 0
    assert after[("vlm_gateway_ready", frozenset())] == 1


async def test_rejection_is_counted_by_code(fake: tuple[httpx.AsyncClient, FakeAdapter]) -> None:
    client, adapter = fake
    bad = image_request()
    bad["messages"][0]["content"][1]["image_url"]["url"] = "data:image/png;base64,AAAA"
    before = await scrape(client)
    response = await client.post(URL, json=bad)
    assert response.status_code == 400
    code = response.json()["error"]["code"]
    after = await scrape(client)
    assert delta(before, after, "vlm_gateway_guard_rejections_total", code=code) == 1
    assert delta(before, after, "vlm_gateway_errors_total", code=code, status_class="4xx") == 1
    request = {"model": MODEL, "task": "describe", "backend": "local", "outcome": "client_error"}
    assert delta(before, after, "vlm_gateway_requests_total", **request) == 1
    assert delta(before, after, "vlm_gateway_images_total", source="data") == 0
    assert adapter.requests == []


async def test_stream_observes_inter_token_latency(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    client, adapter = fake
    adapter.enqueue("a b c d e")
    before = await scrape(client)
    response = await client.post(
        URL, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    assert response.status_code == 200
    after = await scrape(client)
    request = {"model": MODEL, "task": "text", "backend": "local", "outcome": "success"}
    assert delta(before, after, "vlm_gateway_requests_total", **request) == 1
    assert delta(before, after, "vlm_gateway_completion_tokens_total", model=MODEL) == 5
    assert delta(before, after, "vlm_gateway_inter_token_latency_seconds_count", model=MODEL) == 4


async def test_random_model_names_do_not_grow_series(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        await client.post(
            URL, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        )
        before = await scrape(client)
        for i in range(20):
            body = {"model": f"attacker-{i}", "messages": [{"role": "user", "content": "x"}]}
            assert (await client.post(URL, json=body)).status_code == 404
            assert (await client.get(f"/v1/models/x{i}")).status_code == 404
            assert (await client.request("PATCH", f"/random/{i}")).status_code in (404, 405)
        after = await scrape(client)
        assert set(after) - set(before) <= {
            ("vlm_gateway_errors_total", frozenset({("code", c), ("status_class", "4xx")}))
            for c in ("model_not_found", "not_found", "method_not_allowed")
        } | {
            (name, frozenset({("model", "other"), ("task", "none"), ("backend", "none"),
                              ("outcome", "client_error")}))
            for name in ("vlm_gateway_requests_total", "vlm_gateway_requests_created")
        } | {key for key in after if key[0].startswith("vlm_gateway_request_duration_seconds")
             and ("model", "other") in key[1]} | {
            key for key in after if key[0].startswith("vlm_gateway_http")
        }  # fmt: skip
        assert not any("attacker" in str(key) or "random/" in str(key) for key in after)


async def test_client_disconnect_is_counted_as_cancelled() -> None:
    adapter = FakeAdapter(Capabilities(model_id=MODEL), token_delay_s=0.05)
    adapter.enqueue(" ".join(["word"] * 200))
    app = build_app(adapter)
    async with running(app), http_client(app) as client:
        before = await scrape(client)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        await stream_then_disconnect(app, body, b"word")
        after = await scrape(client)
    assert delta(before, after, "vlm_gateway_cancelled_requests_total", model=MODEL) == 1
    request = {"model": MODEL, "task": "text", "backend": "local", "outcome": "cancelled"}
    assert delta(before, after, "vlm_gateway_requests_total", **request) == 1
    assert after[("vlm_gateway_in_flight_requests", frozenset())] == 0
