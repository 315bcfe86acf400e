"""Routing a task the local model is weak at to an upstream backend: two real gateway processes,
the front one forwarding math questions to the other over the OpenAI API."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.routing import CONFIG_DIR
from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def front(
    server: Server, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A gateway whose `math` policy redirects to the session server as backend `big`."""
    work = tmp_path_factory.mktemp("front")
    profiles = work / "models"
    shutil.copytree(CONFIG_DIR / "models", profiles)
    local = (profiles / "qwen3-vl-2b-instruct.toml").read_text()
    (profiles / "big.toml").write_text(local.split("[weak_tasks.math]")[0])
    routing = (CONFIG_DIR / "routing.toml").read_text()
    math_policy = 'beyond_action = "warn"\ntask = "Work through'
    routing = routing.replace("[policy.math]\n", '[policy.math]\nredirect_to = "big"\n', 1)
    routing = routing.replace(math_policy, math_policy.replace('"warn"', '"redirect"'), 1)
    routing += (
        '\n[backends.big]\nprofile = "big"\nnames = ["big-model"]\n'
        f'[backends.big.upstream]\nbase_url = "{server.base_url}/v1"\n'
        f'model = "{tiny_model_dir}"\ntimeout_s = 60.0\n'
    )
    (work / "routing.toml").write_text(routing)
    srv = Server(
        tiny_model_dir,
        work / "front.log",
        VLM_GATEWAY_ROUTER__ROUTING_FILE=str(work / "routing.toml"),
        VLM_GATEWAY_ROUTER__PROFILES_DIR=str(profiles),
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_math_is_answered_by_the_upstream(
    front: Server, server: Server, tiny_model_dir: Path
) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
        {"type": "text", "text": "Solve the equation on this whiteboard step by step."},
    ]
    body = {
        "model": str(tiny_model_dir),
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 5,
        "temperature": 0,
    }
    response = httpx.post(f"{front.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-task"] == "math"
    assert response.headers["x-gateway-backend"] == "big"
    assert "task_redirected" in response.headers["x-gateway-warnings"]
    assert response.json()["usage"]["completion_tokens"] >= 1
    models = [m["id"] for m in httpx.get(f"{front.base_url}/v1/models").json()["data"]]
    assert models == [str(tiny_model_dir), "big-model"]
    # Other tasks stay on the local model.
    content[1]["text"] = "Describe this picture."
    local = httpx.post(f"{front.base_url}/v1/chat/completions", json=body, timeout=60)
    assert local.headers["x-gateway-backend"] == "local"
