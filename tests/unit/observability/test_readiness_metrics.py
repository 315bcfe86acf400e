"""``/ready`` answering 503 while the model loads is expected at every start-up: it counts in
the HTTP request series with its status, but in neither error counter (which alerts watch)."""

from __future__ import annotations

import asyncio

from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from gateway.app import create_app
from gateway.observability.labels import is_error, is_readiness_answer
from gateway.routing import CONFIG_DIR, CapabilityRouter
from gateway.settings import Settings


class SlowStart(FakeAdapter):
    """A backend that loads until ``loaded`` is set."""

    def __init__(self) -> None:
        super().__init__(Capabilities(model_id="fake-vlm"))
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        await self.loaded.wait()
        await super().start()


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts(method: str, path: str, code: str) -> tuple[float, float, float]:
    """HTTP requests, HTTP errors and domain errors of a 503 with ``code`` on ``path``."""
    http = {"method": method, "path": path, "status_code": "503", "app_name": "vlm-gateway"}
    return (
        sample("vlm_gateway_http_requests_total", http),
        sample("vlm_gateway_http_requests_error_total", http),
        sample("vlm_gateway_errors_total", {"code": code, "status_class": "5xx"}),
    )


def test_only_readys_503_is_a_readiness_answer() -> None:
    assert is_readiness_answer(503, "/ready")
    assert not is_error(503, "/ready")
    assert is_error(500, "/ready")
    assert is_error(503, "/v1/chat/completions")
    assert is_error(503)
    assert not is_error(499)


async def test_not_ready_503_counts_as_a_request_but_not_as_an_error() -> None:
    router = CapabilityRouter.from_files(
        CONFIG_DIR / "routing.toml", CONFIG_DIR / "models", served_names=("fake-vlm",)
    )
    backend = SlowStart()
    app = create_app(Settings(), {"local": backend}, router)
    before = counts("GET", "/ready", "not_ready")
    chat_before = counts("POST", "/v1/chat/completions", "not_ready")
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        after = counts("GET", "/ready", "not_ready")
        # The same 503 from the API is an error: a client asked for an answer and got none.
        chat = {"model": "fake-vlm", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 503
        chat_after = counts("POST", "/v1/chat/completions", "not_ready")
        backend.loaded.set()
        for _ in range(100):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("never ready")
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 0, 0]
    # The chat 503 adds one domain error (not_ready, 5xx) besides its own HTTP series.
    assert [b - a for a, b in zip(chat_before, chat_after, strict=True)] == [1, 1, 1]
