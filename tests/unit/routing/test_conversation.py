"""Conversation-stable prompts: the router's instruction is the opening task's, and an image's
pixel budget is the largest among the tasks of the turns from its own to the latest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.routing import CONFIG_DIR, CapabilityRouter, TurnView

NAME = "qwen3-vl-2b-instruct"
EVAL = Path(__file__).with_name("router_eval.jsonl")


@pytest.fixture(scope="module")
def router() -> CapabilityRouter:
    return CapabilityRouter.from_files(
        CONFIG_DIR / "routing.toml", CONFIG_DIR / "models", served_names=(NAME,)
    )


def instruction(router: CapabilityRouter, task: str) -> str:
    policy = router.policies[task]
    return router.prompt_template.format(
        task=policy.task, region=policy.region, format=policy.format
    )


def budget(router: CapabilityRouter, task: str) -> int:
    return router.policies[task].max_pixels or router.profile("local").max_pixels


def chat(*turns: tuple[str, int]) -> list[TurnView]:
    """User turns (text, images), each followed by an assistant answer except the last."""
    out: list[TurnView] = []
    for text, images in turns:
        out += [TurnView("user", text, images), TurnView("assistant", "An answer.", 0)]
    return out[:-1]


GENERAL = ("Is this mushroom safe to eat?", 1)
DESCRIBE = ("Describe this image in detail.", 0)
OCR = ("Transcribe the text in this photo", 1)


def test_task_change_keeps_the_instruction_and_the_image_size(router: CapabilityRouter) -> None:
    first = router.route(chat(GENERAL), model=NAME)
    then = router.route(chat(GENERAL, DESCRIBE), model=NAME)
    assert (first.task, then.task) == ("general", "describe")
    assert then.system_prompt == first.system_prompt == instruction(router, "general")
    assert then.max_pixels == first.max_pixels == (budget(router, "general"),)
    assert budget(router, "describe") < budget(router, "general")  # it would have shrunk
    # Everything else follows the latest task.
    describe = router.policies["describe"]
    assert (then.temperature, then.top_p) == (describe.temperature, describe.top_p)
    assert then.text_heavy is describe.text_heavy
    assert then.reason == "latest"


def test_a_later_task_that_needs_more_pixels_raises_the_budget(router: CapabilityRouter) -> None:
    turns = chat(("Describe this image", 1), ("Now transcribe the text on the sign.", 0))
    decision = router.route(turns, model=NAME)
    assert decision.task == "ocr"
    assert decision.system_prompt == instruction(router, "describe")
    assert decision.max_pixels == (budget(router, "ocr"),)
    assert decision.text_heavy is True  # the latest task's
    # And it stays raised when the conversation goes back to describing.
    more = router.route([*turns, TurnView("assistant", "OPEN", 0), *chat(DESCRIBE)], model=NAME)
    assert more.task == "describe"
    assert more.max_pixels == (budget(router, "ocr"),)
    assert more.system_prompt == instruction(router, "describe")


def test_each_image_takes_the_tasks_from_its_own_turn_on(router: CapabilityRouter) -> None:
    turns = chat(OCR, ("Describe this other picture.", 1))
    decision = router.route(turns, model=NAME)
    assert decision.task == "describe"
    assert decision.system_prompt == instruction(router, "ocr")
    assert decision.max_pixels == (budget(router, "ocr"), budget(router, "describe"))
    # A later turn asking for small print raises both images.
    later = chat(OCR, ("Describe this other picture.", 1), ("What does the small print say?", 0))
    decision = router.route(later, model=NAME)
    assert decision.task == "ocr"
    assert decision.max_pixels == (budget(router, "ocr"),) * 2
    # Several images in one turn share its budget; text-only turns before the first image do
    # not choose the instruction.
    turns = chat(("hello", 0), ("Describe these.", 2), ("Transcribe the text in the third.", 1))
    decision = router.route(turns, model=NAME)
    assert decision.system_prompt == instruction(router, "describe")
    assert decision.max_pixels == (budget(router, "ocr"),) * 3


def test_a_growing_conversation_never_changes_its_prefix(router: CapabilityRouter) -> None:
    texts = [
        ("Is this mushroom safe to eat?", 1),
        ("Describe it.", 0),
        ("What is written on the label?", 0),
        ("Describe the colours.", 0),
        ("Here is another one. What is this?", 1),
    ]
    seen: list[tuple[int, ...]] = []
    for n in range(1, len(texts) + 1):
        decision = router.route(chat(*texts[:n]), model=NAME)
        assert decision.system_prompt == instruction(router, "general")
        seen.append(decision.max_pixels)
    firsts = [s[0] for s in seen]
    assert firsts == sorted(firsts)  # the first image never shrinks
    assert firsts[-1] == budget(router, "ocr")


def test_client_system_message_still_wins(router: CapabilityRouter) -> None:
    turns = [TurnView("system", "You are terse.", 0), *chat(GENERAL, DESCRIBE)]
    decision = router.route(turns, model=NAME)
    assert decision.task == "describe"
    assert decision.system_prompt is None
    assert decision.max_pixels == (budget(router, "general"),)


def test_tools_still_get_no_instruction(router: CapabilityRouter) -> None:
    decision = router.route(chat(GENERAL, DESCRIBE), model=NAME, tools=True)
    assert decision.system_prompt is None
    assert decision.max_pixels == (budget(router, "general"),)


def test_structured_output_follows_the_latest_request(router: CapabilityRouter) -> None:
    decision = router.route(chat(GENERAL, DESCRIBE), model=NAME, structured=True)
    lines = (decision.system_prompt or "").splitlines()
    assert lines[:2] == instruction(router, "general").splitlines()[:2]
    assert "JSON" in lines[2]


def test_text_only_conversations_are_unchanged(router: CapabilityRouter) -> None:
    decision = router.route(chat(("Hi", 0), ("Transcribe this poem for me", 0)), model=NAME)
    assert (decision.task, decision.system_prompt, decision.max_pixels) == ("text", None, ())


def test_earlier_turns_are_read_as_they_were_classified() -> None:
    """``Reading.at`` gives each user turn exactly what ``classify`` gave it as the latest."""
    router = CapabilityRouter.from_files(CONFIG_DIR / "routing.toml", CONFIG_DIR / "models")
    classifier = router.classifier
    rows = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line]
    checked = 0
    for row in rows:
        history = [TurnView(h[0], h[1], h[2]) for h in row.get("history", [])]
        for turns in (
            [*history, TurnView("user", row["prompt"], row["images"])],
            [TurnView("system", "Read receipts carefully.", 0), *history],
        ):
            reading = classifier.read(turns)
            assert reading.latest() == classifier.classify(turns)
            for n, index in enumerate(reading.users):
                assert reading.at(n) == classifier.classify(turns[: index + 1])
                checked += 1
    assert checked > len(rows)
