"""CapabilityRouter: decisions per task, actions per configuration, names, errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.errors import ModelNotFound
from gateway.routing import CONFIG_DIR, CapabilityRouter, RouterConfig, TurnView
from gateway.routing.profiles import ProfileError

ROUTING = CONFIG_DIR / "routing.toml"
MODELS = CONFIG_DIR / "models"
NAME = "qwen3-vl-2b-instruct"


@pytest.fixture(scope="module")
def router() -> CapabilityRouter:
    return CapabilityRouter.from_files(ROUTING, MODELS, served_names=(NAME,))


def ask(text: str, images: int = 1) -> list[TurnView]:
    return [TurnView("user", text, images)]


def with_policy(router: CapabilityRouter, task: str, **changes: object) -> CapabilityRouter:
    policies = dict(router.policies)
    policies[task] = dataclasses.replace(policies[task], **changes)  # type: ignore[arg-type]
    return CapabilityRouter(
        classifier=router.classifier, backends=router.backends, policies=policies
    )


def edit_routing(tmp_path: Path, section: str, key: str, value: str, extra: str = "") -> Path:
    """A copy of the bundled routing.toml with one key of one table changed (and extra tables)."""
    text = ROUTING.read_text(encoding="utf-8")
    head, sep, rest = text.partition(f"[{section}]\n")
    assert sep, section
    rest, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", rest, count=1, flags=re.M)
    assert n == 1
    path = tmp_path / "routing.toml"
    path.write_text(head + sep + rest + extra, encoding="utf-8")
    return path


# -- per task: header value, shaped prompt, pixel budget, sampling -----------------------------

CASES = {
    "ocr": "Transcribe the text in this photo",
    "document": "Extract the line items from this invoice",
    "chart": "What trend does this line chart show?",
    "math": "Solve the equation in the picture",
    "grounding": "Give me the bounding box of the dog",
    "describe": "Describe this image",
    "general": "Is this mushroom safe to eat?",
}


@pytest.mark.parametrize("task", list(CASES))
def test_decision_per_vision_task(router: CapabilityRouter, task: str) -> None:
    decision = router.route(ask(CASES[task]), model=NAME)
    policy = router.policies[task]
    assert decision.task == task
    assert decision.backend == "local"
    assert decision.max_pixels == (policy.max_pixels,)
    assert decision.text_heavy is policy.text_heavy
    assert decision.temperature == policy.temperature
    assert decision.top_p == policy.top_p
    prompt = decision.system_prompt
    assert prompt is not None
    lines = prompt.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Task", "Region", "Output format"]
    assert lines[0] == f"Task: {policy.task}"
    assert lines[2] == f"Output format: {policy.format}"


def test_budgets_follow_the_task(router: CapabilityRouter) -> None:
    budget = {t: router.route(ask(CASES[t]), model=NAME).max_pixels[0] for t in CASES}
    assert budget["ocr"] == budget["document"] > budget["chart"] > budget["describe"]
    assert budget["describe"] < budget["general"]
    assert all(b % 1024 == 0 and b <= router.profile("local").max_pixels for b in budget.values())
    assert router.route(ask(CASES["ocr"]), model=NAME).temperature == 0.0


def test_text_only_request(router: CapabilityRouter) -> None:
    decision = router.route(ask("Solve x^2 = 4", images=0), model=NAME)
    assert (decision.task, decision.action, decision.max_pixels) == ("text", "proceed", ())
    assert decision.system_prompt is None
    assert decision.warnings == ()


def test_client_system_message_is_never_replaced(router: CapabilityRouter) -> None:
    turns = [TurnView("system", "You are terse.", 0), *ask(CASES["ocr"])]
    decision = router.route(turns, model=NAME)
    assert decision.task == "ocr"
    assert decision.system_prompt is None


def test_structured_output_changes_only_the_format_line(router: CapabilityRouter) -> None:
    plain = router.route(ask(CASES["document"]), model=NAME).system_prompt or ""
    structured = router.route(ask(CASES["document"]), model=NAME, structured=True)
    assert structured.system_prompt is not None
    assert structured.system_prompt.splitlines()[:2] == plain.splitlines()[:2]
    assert "JSON" in structured.system_prompt.splitlines()[2]


def test_router_config_switches(router: CapabilityRouter) -> None:
    quiet = CapabilityRouter.from_config(
        RouterConfig(shape_prompts=False, sampling_defaults=False), served_names=(NAME,)
    )
    decision = quiet.route(ask(CASES["ocr"]), model=NAME)
    assert decision.system_prompt is None
    assert decision.temperature is None
    assert decision.max_pixels == (router.policies["ocr"].max_pixels,)


# -- beyond the model: warn / redirect / refuse ------------------------------------------------


def test_default_math_is_answered_with_a_warning(router: CapabilityRouter) -> None:
    decision = router.route(ask(CASES["math"]), model=NAME)
    assert decision.action == "warn"
    assert decision.warnings == ("task_beyond_model",)
    assert decision.refusal is None
    assert decision.detail is not None
    assert "symbolic mathematics" in decision.detail


def test_refuse_from_the_routing_file(tmp_path: Path) -> None:
    path = edit_routing(tmp_path, "policy.math", "beyond_action", '"refuse"')
    router = CapabilityRouter.from_files(path, MODELS, served_names=(NAME,))
    decision = router.route(ask(CASES["math"]), model=NAME)
    assert decision.action == "refuse"
    assert decision.task == "math"
    assert decision.refusal is not None
    assert decision.refusal.startswith("Qwen3-VL-2B-Instruct cannot solve symbolic mathematics")
    assert "Use a larger reasoning model" in decision.refusal
    assert "instead" in decision.refusal
    # Chart reading is within the model: never refused.
    assert router.route(ask(CASES["chart"]), model=NAME).action == "proceed"


def test_refusal_needs_a_confident_classification(tmp_path: Path) -> None:
    path = edit_routing(tmp_path, "policy.math", "beyond_action", '"refuse"')
    router = CapabilityRouter.from_files(path, MODELS, served_names=(NAME,))
    assert router.refuse_min_margin == 2.0
    sure = router.route(ask("Solve this integral step by step."), model=NAME)
    assert (sure.action, sure.reason) == ("refuse", "latest")
    assert sure.margin >= router.refuse_min_margin
    # math 4 against chart 3: a margin of 1 is answered with a warning instead.
    unsure = router.route(ask("Integrate the function in this plot."), model=NAME)
    assert (unsure.task, unsure.action, unsure.margin) == ("math", "warn", 1.0)
    assert unsure.warnings == ("task_beyond_model",)
    assert unsure.refusal is None
    assert "Not refused: the task is uncertain (margin 1)" in (unsure.detail or "")
    # Shape and colour questions are not math at all.
    for text in ("Is this triangle red?", "And the circle colour?"):
        decision = router.route(ask(text), model=NAME)
        assert (decision.task, decision.action) == ("describe", "proceed")
    # A follow-up keeps a confident task, and with it the refusal.
    turns = [
        TurnView("user", "Solve the equation in the picture", 1),
        TurnView("assistant", "x = 2", 0),
        TurnView("user", "And the second one?", 0),
    ]
    follow = router.route(turns, model=NAME)
    assert (follow.task, follow.reason, follow.action) == ("math", "follow_up", "refuse")
    # The threshold is configuration: 0 refuses whatever the margin.
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("refuse_min_margin = 2.0", "refuse_min_margin = 0"), "utf-8")
    always = CapabilityRouter.from_files(path, MODELS, served_names=(NAME,))
    assert always.route(ask("Integrate the function in this plot."), model=NAME).action == "refuse"


def test_redirect_to_another_backend(tmp_path: Path) -> None:
    big = (MODELS / f"{NAME}.toml").read_text(encoding="utf-8")
    big = big.split("[weak_tasks.math]")[0].replace("max_pixels = 16777216", "max_pixels = 1000000")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{NAME}.toml").write_text(
        (MODELS / f"{NAME}.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (tmp_path / "models" / "big.toml").write_text(big, encoding="utf-8")
    extra = '\n[backends.big]\nprofile = "big"\nnames = ["big-vlm"]\n'
    text = edit_routing(tmp_path, "policy.math", "beyond_action", '"redirect"', extra).read_text()
    path = tmp_path / "routing.toml"
    path.write_text(
        text.replace("[policy.math]\n", '[policy.math]\nredirect_to = "big"\n'), encoding="utf-8"
    )
    router = CapabilityRouter.from_files(path, tmp_path / "models", served_names=(NAME,))
    decision = router.route(ask(CASES["math"]), model=NAME)
    assert (decision.action, decision.backend) == ("redirect", "big")
    assert decision.warnings == ("task_redirected",)
    assert decision.max_pixels == (1000000,)  # the target's ceiling lowers the task budget
    assert router.route(ask(CASES["ocr"]), model=NAME).backend == "local"
    # Asked of the target directly, nothing is beyond it.
    assert router.route(ask(CASES["math"]), model="big-vlm").action == "proceed"
    # A refusal on the small model names the capable backend.
    refusing = with_policy(router, "math", beyond_action="refuse")
    assert "'big-vlm'" in (refusing.route(ask(CASES["math"]), model=NAME).refusal or "")


def test_weak_ocr_language_triggers_the_ocr_policy(router: CapabilityRouter) -> None:
    decision = router.route(ask("Read the Japanese text on this sign"), model=NAME)
    assert decision.task == "ocr"
    assert decision.action == "warn"
    assert decision.warnings == ("task_beyond_model", "ocr_language_weak")
    assert "Japanese" in (decision.detail or "")
    assert "Chinese, English" in (decision.detail or "")
    fine = router.route(ask("Read the Chinese text on this sign"), model=NAME)
    assert fine.action == "proceed"
    assert fine.warnings == ()
    target = router.route(ask("Translate the text on the sign into Japanese"), model=NAME)
    assert target.action == "proceed"
    refusing = with_policy(router, "ocr", beyond_action="refuse")
    assert refusing.route(ask("读一下图中的韩文"), model=NAME).action == "refuse"


def test_every_action_is_reachable_for_every_weak_task(router: CapabilityRouter) -> None:
    for task in router.profile("local").weak_tasks:
        for action in ("warn", "refuse"):
            decision = with_policy(router, task, beyond_action=action).route(
                ask(CASES[task]), model=NAME
            )
            assert decision.action == action


# -- names -------------------------------------------------------------------------------------


def test_models_and_aliases(tmp_path: Path) -> None:
    path = edit_routing(tmp_path, "backends.local", "names", '["vision-small", "demo"]')
    router = CapabilityRouter.from_files(path, MODELS, served_names=("demo", "gpt-4o"))
    assert router.models() == ["demo", "gpt-4o", "vision-small"]
    assert {router.resolve(n) for n in router.models()} == {"local"}
    assert router.resolve("DEMO") is None
    assert router.resolve("") is None
    by_backend = CapabilityRouter.from_files(ROUTING, MODELS, served_names={"local": ["m"]})
    assert by_backend.models() == ["m"]
    with pytest.raises(ModelNotFound) as info:
        router.route(ask("hi"), model="nope" * 100)
    assert info.value.param == "model"
    assert len(info.value.message) < 200


def test_one_name_two_backends_is_a_config_error(tmp_path: Path) -> None:
    extra = f'\n[backends.other]\nprofile = "{NAME}"\nnames = ["{NAME}"]\n'
    path = edit_routing(tmp_path, "router", "check_ocr_languages", "true", extra)
    with pytest.raises(ProfileError, match="two backends"):
        CapabilityRouter.from_files(path, MODELS, served_names=(NAME,))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("policy.math", "beyond_action", '"explode"', "beyond_action"),
        ("policy.math", "beyond_action", '"redirect"', "redirect_to"),
        ("policy.ocr", "max_pixels", "-1", "max_pixels"),
        ("backends.local", "profile", '"missing"', "missing.toml"),
        ("classifier", "min_score", "[1]", "routing.toml"),
        ("router", "refuse_min_margin", "-1", "refuse_min_margin"),
        ("router", "refuse_min_margin", '"high"', "refuse_min_margin"),
        ("router", "prompt_template", '"Task: {task} {oops}"', "prompt_template"),
    ],
)
def test_bad_routing_files_are_named(
    tmp_path: Path, section: str, key: str, value: str, message: str
) -> None:
    with pytest.raises(ProfileError, match=re.escape(message)):
        CapabilityRouter.from_files(edit_routing(tmp_path, section, key, value), MODELS)


def test_tools_keep_the_task_and_its_budget_but_drop_the_instruction(
    router: CapabilityRouter,
) -> None:
    turns = ask(CASES["ocr"])
    plain = router.route(turns, model=NAME)
    tools = router.route(turns, model=NAME, tools=True)
    assert plain.system_prompt
    assert tools.system_prompt is None
    assert dataclasses.replace(tools, system_prompt=plain.system_prompt) == plain
