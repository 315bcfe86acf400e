"""Models, health, readiness and the OpenAPI schema."""

from __future__ import annotations

import asyncio

import httpx

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from tests.api.conftest import MODEL, ClientFactory


async def test_models_list_and_retrieve(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [MODEL]
    card = listing["data"][0]
    assert card["object"] == "model"
    assert card["owned_by"] == "vlm-gateway"
    assert isinstance(card["created"], int)
    assert (await client.get(f"/v1/models/{MODEL}")).json() == card
    missing = await client.get("/v1/models/unknown/model")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_health_and_readiness_follow_the_backend(make_client: ClientFactory) -> None:
    gate = asyncio.Event()

    class SlowStart(FakeAdapter):
        async def start(self) -> None:
            await gate.wait()
            await super().start()

    async with make_client(SlowStart(Capabilities(model_id=MODEL))) as (client, _):
        assert (await client.get("/health")).json() == {"status": "ok"}
        not_ready = await client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "not_ready"
        assert "retry-after" in not_ready.headers
        gate.set()
        for _ in range(100):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/ready")).json() == {"status": "ready"}


async def test_failed_start_is_reported_not_ready(make_client: ClientFactory) -> None:
    class Broken(FakeAdapter):
        async def start(self) -> None:
            raise RuntimeError("weights missing")

    async with make_client(Broken(Capabilities(model_id=MODEL))) as (client, _):
        await asyncio.sleep(0.05)
        assert (await client.get("/ready")).status_code == 503


async def test_openapi_schema_is_served_offline(client: httpx.AsyncClient) -> None:
    """The document itself, as JSON, with no page that fetches scripts from a CDN."""
    root = await client.get("/schema")
    assert root.status_code == 200
    assert root.headers["content-type"].startswith("application/")
    assert b"<script" not in root.content
    schema = (await client.get("/schema/openapi.json")).json()
    assert schema == root.json()
    assert "/v1/chat/completions" in schema["paths"]
    assert "/v1/models" in schema["paths"]
