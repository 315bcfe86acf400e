"""The capability router through the whole app: per task, the headers, the shaped prompt the
backend received, the pixel budget the guard applied, and each out-of-capability action."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base import Capabilities
from adapters.testing import FakeAdapter
from gateway.app import create_app
from gateway.routing import CONFIG_DIR, CapabilityRouter, RouterConfig
from gateway.settings import Settings
from tests.api.conftest import MODEL, ClientFactory, http_client, running
from tests.support import data_url, make_image

URL = "/v1/chat/completions"
BIG = make_image(2000, 1500)  # 3 MP: every task's budget scales it down

# (prompt, task, pixel budget from config/routing.toml, default temperature)
CASES = [
    ("Transcribe all the text in this image.", "ocr", 2_097_152, 0.0),
    ("Extract the line items of this invoice as a table.", "document", 2_097_152, 0.0),
    ("What does this bar chart show about sales per quarter?", "chart", 1_605_632, 0.1),
    ("Solve the equation on this whiteboard step by step.", "math", 1_605_632, 0.1),
    ("Where is the cat? Give me its bounding box.", "grounding", 1_003_520, 0.0),
    ("Describe this picture.", "describe", 589_824, 0.7),
    ("请描述这张图片。", "describe", 589_824, 0.7),
    ("图中的表格里第三行的金额是多少？", "document", 2_097_152, 0.0),
]


def image_chat(text: str, **fields: Any) -> dict[str, Any]:
    content = [
        {"type": "image_url", "image_url": {"url": data_url(BIG)}},
        {"type": "text", "text": text},
    ]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


@pytest.mark.parametrize(("prompt", "task", "budget", "temperature"), CASES)
async def test_each_task_is_shaped_and_budgeted(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
    prompt: str,
    task: str,
    budget: int,
    temperature: float,
) -> None:
    client, adapter = fake
    response = await client.post(URL, json=image_chat(prompt))
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-task"] == task
    assert response.headers["x-gateway-backend"] == "local"
    warnings = response.headers.get("x-gateway-warnings", "").split(",")
    assert "downscaled_for_budget" in warnings
    assert response.json()["warnings"] == warnings
    (request,) = adapter.requests
    system, user = request.messages
    assert system.role == "system"
    assert system.content[0].startswith("Task: ")  # type: ignore[union-attr]
    assert "Output format: " in system.content[0]  # type: ignore[operator]
    assert user.content[1] == prompt  # the user's own words, untouched
    (image,) = request.images
    width, height = image.size
    assert width * height <= budget
    assert image.size == adapter.capabilities.fit(2000, 1500, budget)
    assert request.sampling.temperature == temperature


async def test_client_system_prompt_and_sampling_win(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    client, adapter = fake
    body = image_chat("Transcribe all the text in this image.", temperature=0.9)
    body["messages"].insert(0, {"role": "system", "content": "Answer like a pirate."})
    response = await client.post(URL, json=body)
    assert response.headers["x-gateway-task"] == "ocr"
    (request,) = adapter.requests
    assert request.messages[0].content == ("Answer like a pirate.",)
    assert request.sampling.temperature == 0.9


async def test_text_only_requests_are_not_shaped(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    client, adapter = fake
    response = await client.post(
        URL, json={"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}]}
    )
    assert response.headers["x-gateway-task"] == "text"
    (request,) = adapter.requests
    assert [m.role for m in request.messages] == ["user"]


async def test_beyond_the_model_warns_by_default(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    client, _ = fake
    response = await client.post(URL, json=image_chat("Integrate the function in this plot."))
    assert response.status_code == 200
    assert response.headers["x-gateway-task"] == "math"
    assert "task_beyond_model" in response.headers["x-gateway-warnings"]


def routing_with(tmp_path: Path, math_policy: str) -> tuple[Path, Path]:
    """config/routing.toml with a second backend ``big`` and a replaced math action."""
    profiles = tmp_path / "models"
    shutil.copytree(CONFIG_DIR / "models", profiles)
    strong = (profiles / "qwen3-vl-2b-instruct.toml").read_text()
    strong = strong.split("[weak_tasks.math]")[0]  # a profile that can do the math
    (profiles / "big-math.toml").write_text(strong)
    text = (CONFIG_DIR / "routing.toml").read_text()
    text = text.replace("[policy.math]\n", f"[policy.math]\n{math_policy}\n", 1)
    text = text.replace('beyond_action = "warn"\ntask = "Work through', 'task = "Work through')
    text += '\n[backends.big]\nprofile = "big-math"\nnames = ["big-model"]\n'
    routing = tmp_path / "routing.toml"
    routing.write_text(text)
    return routing, profiles


@asynccontextmanager
async def two_backends(
    tmp_path: Path, math_policy: str
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeAdapter, FakeAdapter]]:
    routing, profiles = routing_with(tmp_path, math_policy)
    router = CapabilityRouter.from_config(
        RouterConfig(routing_file=str(routing), profiles_dir=str(profiles)),
        served_names={"local": (MODEL,)},
    )
    local, big = (FakeAdapter(Capabilities(model_id=n)) for n in (MODEL, "big-model"))
    app = create_app(Settings(), {"local": local, "big": big}, router)
    async with running(app), http_client(app) as client:
        yield client, local, big


async def test_beyond_the_model_can_be_refused(tmp_path: Path) -> None:
    async with two_backends(tmp_path, 'beyond_action = "refuse"') as (client, local, big):
        response = await client.post(URL, json=image_chat("Solve this integral step by step."))
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "task_not_supported"
        assert error["type"] == "invalid_request_error"
        assert "cannot solve symbolic mathematics" in error["message"]
        assert "instead" in error["message"]
        assert response.headers["x-gateway-task"] == "math"
        assert response.headers["x-gateway-backend"] == "local"
        assert local.requests == []
        assert big.requests == []


async def test_beyond_the_model_can_be_redirected(tmp_path: Path) -> None:
    policy = 'beyond_action = "redirect"\nredirect_to = "big"'
    async with two_backends(tmp_path, policy) as (client, local, big):
        response = await client.post(URL, json=image_chat("Solve this integral step by step."))
        assert response.status_code == 200
        assert response.headers["x-gateway-backend"] == "big"
        assert "task_redirected" in response.headers["x-gateway-warnings"]
        assert local.requests == []
        assert len(big.requests) == 1
        # Other tasks stay on the model they asked for.
        response = await client.post(URL, json=image_chat("Describe this picture."))
        assert response.headers["x-gateway-backend"] == "local"


def instruction(task: str) -> str:
    """The system message the router injects for ``task`` (config/routing.toml)."""
    router = CapabilityRouter.from_config(RouterConfig())
    policy = router.policies[task]
    return router.prompt_template.format(
        task=policy.task, region=policy.region, format=policy.format
    )


def follow_up(first: str, reply: str, then: str) -> dict[str, Any]:
    """An image turn, the assistant's answer, then a text-only follow-up."""
    body = image_chat(first)
    body["messages"] += [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": then},
    ]
    return body


# (conversation, task, opening task): the shapes questions of issue 15, and follow-ups that keep
# their task or change it (the instruction and the image budget then stay the opening's).
CONVERSATIONS = [
    (image_chat("And the circle colour?"), "describe", "describe"),
    (image_chat("Is this triangle red?"), "describe", "describe"),
    (image_chat("How big is the red rectangle compared to the circle?"), "describe", "describe"),
    (
        follow_up("Find the area of the triangle.", "24", "And the circle colour?"),
        "describe",
        "math",
    ),
    (
        follow_up("Transcribe the text on this page.", "Line one", "And the second line?"),
        "ocr",
        "ocr",
    ),
    (follow_up("识别图中的文字", "第一行：欢迎光临", "那第二行呢？"), "ocr", "ocr"),
    (
        follow_up("Read the numbers on this scoreboard.", "3 - 2", "what about the total?"),
        "ocr",
        "ocr",
    ),
    (
        follow_up("Solve the equation in the picture.", "x = 2", "And the second one?"),
        "math",
        "math",
    ),
]


@pytest.mark.parametrize(("body", "task", "opening"), CONVERSATIONS)
async def test_conversation_is_read_and_its_task_instructed(
    fake: tuple[httpx.AsyncClient, FakeAdapter], body: dict[str, Any], task: str, opening: str
) -> None:
    client, adapter = fake
    response = await client.post(URL, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-task"] == task
    beyond = "task_beyond_model" in response.headers.get("x-gateway-warnings", "")
    assert beyond == (task == "math")  # Qwen3-VL-2B's profile marks math as weak
    (request,) = adapter.requests
    assert request.messages[0].role == "system"
    assert request.messages[0].content == (instruction(opening),)
    assert ("mathematical problem" in instruction(opening)) == (opening == "math")
    (image,) = request.images
    policies = CapabilityRouter.from_config(RouterConfig()).policies
    budget = max(policies[task].max_pixels or 0, policies[opening].max_pixels or 0)
    assert image.size == adapter.capabilities.fit(2000, 1500, budget)


async def test_a_follow_up_whose_task_changed_keeps_the_prompt_prefix(
    fake: tuple[httpx.AsyncClient, FakeAdapter],
) -> None:
    """The engine's prefix and image caches need the same system message and the same image
    size on the follow-up: both stay the opening turn's, the headers report the latest task."""
    client, adapter = fake
    first = await client.post(URL, json=image_chat("Is this mushroom safe to eat?"))
    assert first.headers["x-gateway-task"] == "general"
    body = follow_up("Is this mushroom safe to eat?", "No.", "Describe this image in detail.")
    then = await client.post(URL, json=body)
    assert then.status_code == 200, then.text
    assert then.headers["x-gateway-task"] == "describe"
    before, after = adapter.requests
    assert after.messages[0] == before.messages[0]
    assert after.messages[0].content == (instruction("general"),)
    assert after.messages[1].content[1] == before.messages[1].content[1]  # the opening words
    assert (
        after.images[0].size
        == before.images[0].size
        == adapter.capabilities.fit(2000, 1500, 1_003_520)
    )
    assert after.images[0].digest == before.images[0].digest
    assert after.sampling.temperature == 0.7  # describe's default: the latest task's
    # A later turn that needs more pixels re-encodes the image larger, once.
    body["messages"] += [
        {"role": "assistant", "content": "A brown mushroom."},
        {"role": "user", "content": "Transcribe the small print on the label."},
    ]
    ocr = await client.post(URL, json=body)
    assert ocr.headers["x-gateway-task"] == "ocr"
    assert adapter.requests[-1].messages[0] == before.messages[0]
    assert adapter.requests[-1].images[0].size == adapter.capabilities.fit(2000, 1500, 2_097_152)


async def test_a_responses_follow_up_keeps_the_prompt_prefix(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The same through the Responses API's ``previous_response_id`` (translated to chat)."""
    opening = {
        "role": "user",
        "content": [
            {"type": "input_image", "image_url": data_url(BIG), "detail": "auto"},
            {"type": "input_text", "text": "Is this mushroom safe to eat?"},
        ],
    }
    adapter = FakeAdapter(Capabilities(model_id=MODEL))
    async with make_client(adapter, files={"data_dir": str(tmp_path)}) as (client, _):
        first = await client.post("/v1/responses", json={"model": MODEL, "input": [opening]})
        assert first.status_code == 200, first.text
        body = {
            "model": MODEL,
            "input": "Describe this image in detail.",
            "previous_response_id": first.json()["id"],
        }
        then = await client.post("/v1/responses", json=body)
        assert then.status_code == 200, then.text
        assert then.headers["x-gateway-task"] == "describe"
    before, after = adapter.requests
    assert after.messages[0] == before.messages[0]
    assert after.messages[0].content == (instruction("general"),)
    assert after.images[0].size == before.images[0].size


async def test_low_margin_refusal_is_a_warning(tmp_path: Path) -> None:
    async with two_backends(tmp_path, 'beyond_action = "refuse"') as (client, local, big):
        shapes = await client.post(URL, json=image_chat("Is this triangle red?"))
        assert shapes.status_code == 200
        assert shapes.headers["x-gateway-task"] == "describe"
        assert "task_beyond_model" not in shapes.headers.get("x-gateway-warnings", "")
        # math 4 against chart 3: not sure enough to refuse, answered with a warning.
        unsure = await client.post(URL, json=image_chat("Integrate the function in this plot."))
        assert unsure.status_code == 200
        assert unsure.headers["x-gateway-task"] == "math"
        assert "task_beyond_model" in unsure.headers["x-gateway-warnings"]
        assert len(local.requests) == 2
        sure = await client.post(URL, json=image_chat("Solve this integral step by step."))
        assert sure.status_code == 422
        assert big.requests == []


async def test_aliases_are_listed_and_served(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        names = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert names == [MODEL]
    router = CapabilityRouter.from_config(
        RouterConfig(), served_names={"local": (MODEL, "vision-small", "qwen-vl")}
    )
    app = create_app(Settings(), {"local": FakeAdapter(Capabilities(model_id=MODEL))}, router)
    async with running(app), http_client(app) as client:
        names = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert names == [MODEL, "vision-small", "qwen-vl"]
        body = {"model": "qwen-vl", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post(URL, json=body)
        assert response.status_code == 200
        assert response.json()["model"] == "qwen-vl"
