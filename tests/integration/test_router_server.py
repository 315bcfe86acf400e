"""The capability router through a real ``vlm-gateway serve``: short questions about a picture of
shapes are not math, follow-ups keep their conversation's task, and a refusal needs a confident
classification (issue 15).

The injected system prompt is checked from outside: the router adds its task instruction only
when the client sent no system message, and a client system message is sent to the model as the
same single leading message. So a conversation answered with the instruction for task T has
exactly the prompt length of the same conversation sent with T's instruction as its own system
message, and not that of the conversation with the math instruction. T is the task of the
conversation's opening turn (its instruction stays the same for the whole conversation, so the
prefix cache holds across turns), while ``x-gateway-task`` reports the latest turn's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.routing import CONFIG_DIR, CapabilityRouter, RouterConfig
from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = pytest.mark.integration

SHAPES = data_url(make_image(320, 256))  # a red rectangle and a blue circle


def chat(model: str, *turns: str) -> dict[str, Any]:
    """User and assistant turns alternating; the first carries the picture of shapes."""
    first = [
        {"type": "image_url", "image_url": {"url": SHAPES}},
        {"type": "text", "text": turns[0]},
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    for i, text in enumerate(turns[1:]):
        messages.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}


def post(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


def instruction(task: str) -> str:
    router = CapabilityRouter.from_config(RouterConfig())
    policy = router.policies[task]
    return router.prompt_template.format(
        task=policy.task, region=policy.region, format=policy.format
    )


CASES = [  # turns, the latest turn's task, the opening turn's task (the instruction's)
    (("And the circle colour?",), "describe", "describe"),
    (("Is this triangle red?",), "describe", "describe"),
    (("How big is the red rectangle compared to the circle?",), "describe", "describe"),
    (("Find the area of the triangle.", "24", "And the circle colour?"), "describe", "math"),
    (("Transcribe the text in this image.", "vlm-gateway 0", "And the second line?"), "ocr", "ocr"),
    (("识别图中的文字", "第一行：vlm-gateway", "那第二行呢？"), "ocr", "ocr"),
    (("Solve the equation in the picture.", "x = 2", "and the next one?"), "math", "math"),
]


@pytest.mark.parametrize(("turns", "task", "opening"), CASES)
def test_task_header_and_injected_instruction(
    server: Server, tiny_model_dir: Path, turns: tuple[str, ...], task: str, opening: str
) -> None:
    body = chat(str(tiny_model_dir), *turns)
    response = post(server, body)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-task"] == task
    assert response.headers["x-gateway-backend"] == "local"
    warnings = response.headers.get("x-gateway-warnings", "")
    assert ("task_beyond_model" in warnings) == (task == "math")
    assert response.json().get("warnings", []) == [w for w in warnings.split(",") if w]
    injected = response.json()["usage"]["prompt_tokens"]

    def with_system(text: str) -> int:
        explicit = {**body, "messages": [{"role": "system", "content": text}, *body["messages"]]}
        answer = post(server, explicit)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["usage"]["prompt_tokens"])

    assert with_system(instruction(opening)) == injected
    if opening != "math":
        assert with_system(instruction("math")) != injected


@pytest.fixture(scope="module")
def refusing(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway whose routing file sets ``policy.math.beyond_action = "refuse"``."""
    work = tmp_path_factory.mktemp("refusing")
    text = (CONFIG_DIR / "routing.toml").read_text(encoding="utf-8")
    math = 'beyond_action = "warn"\ntask = "Work through'
    assert math in text
    (work / "routing.toml").write_text(text.replace(math, math.replace("warn", "refuse")), "utf-8")
    shutil.copytree(CONFIG_DIR / "models", work / "models")
    srv = Server(
        tiny_model_dir,
        work / "refusing.log",
        VLM_GATEWAY_ROUTER__ROUTING_FILE=str(work / "routing.toml"),
        VLM_GATEWAY_ROUTER__PROFILES_DIR=str(work / "models"),
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_refusal_only_when_the_classifier_is_confident(
    refusing: Server, tiny_model_dir: Path
) -> None:
    model = str(tiny_model_dir)
    for question in (
        "Is this triangle red?",
        "How big is the red rectangle compared to the circle?",
    ):
        response = post(refusing, chat(model, question))
        assert response.status_code == 200, response.text
        assert response.headers["x-gateway-task"] == "describe"
        assert "task_beyond_model" not in response.headers.get("x-gateway-warnings", "")
    # math 4 against chart 3 (margin 1 < refuse_min_margin 2): answered, with the warning.
    unsure = post(refusing, chat(model, "Integrate the function in this plot."))
    assert unsure.status_code == 200, unsure.text
    assert unsure.headers["x-gateway-task"] == "math"
    assert "task_beyond_model" in unsure.headers["x-gateway-warnings"]
    # A confident math question, and a follow-up that keeps it, are refused.
    for turns in (
        ("Solve this integral step by step.",),
        ("Solve the equation in the picture.", "x = 2", "And the second one?"),
    ):
        refused = post(refusing, chat(model, *turns))
        assert refused.status_code == 422, refused.text
        assert refused.headers["x-gateway-task"] == "math"
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("task_not_supported", "messages")
        assert "cannot solve symbolic mathematics" in error["message"]
