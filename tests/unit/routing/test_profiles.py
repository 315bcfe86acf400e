"""Model capability profiles: the bundled one against the reference checkpoint, bad profiles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.routing import CONFIG_DIR, TASKS, CapabilityRouter, TurnView
from gateway.routing.profiles import ProfileError, load_profile

ROUTING = CONFIG_DIR / "routing.toml"
MODELS = CONFIG_DIR / "models"
NAME = "qwen3-vl-2b-instruct"
REFERENCE = CONFIG_DIR.parent.parent / "shared" / "reference" / "qwen3-vl-2b-instruct"


@pytest.fixture(scope="module")
def router() -> CapabilityRouter:
    return CapabilityRouter.from_files(ROUTING, MODELS, served_names=(NAME,))


def test_profile_matches_the_reference_checkpoint(router: CapabilityRouter) -> None:
    profile = router.profile("local")
    assert profile.title == "Qwen3-VL-2B-Instruct"
    assert profile.ocr_quality("zh") == profile.ocr_quality("en") == "strong"
    assert profile.ocr_quality("ar") == profile.ocr_quality("xx") == "weak"
    assert set(profile.weak_tasks) == {"math", "grounding"}
    assert "chart" in profile.strengths
    assert "math" not in profile.strengths
    if REFERENCE.is_dir():
        config = json.loads((REFERENCE / "config.json").read_text())
        pre = json.loads((REFERENCE / "preprocessor_config.json").read_text())
        assert profile.context_length == config["text_config"]["max_position_embeddings"]
        assert profile.min_pixels == pre["size"]["shortest_edge"]
        assert profile.max_pixels == pre["size"]["longest_edge"]
        assert profile.image_factor == pre["patch_size"] * pre["merge_size"]
    caps = profile.to_capabilities(model_id="demo")
    assert (caps.model_id, caps.max_pixels, caps.image_factor) == ("demo", 16777216, 32)


def test_bad_profiles(tmp_path: Path) -> None:
    good = (MODELS / f"{NAME}.toml").read_text(encoding="utf-8")
    for bad, message in [
        (good.replace('zh = "strong"', 'zh = "great"'), "OCR quality"),
        (good.replace("[weak_tasks.math]", "[weak_tasks.algebra]"), "not a task name"),
        (good.replace("max_images = 8", "max_images = 8\ncolour = 1"), "unknown [model] key"),
        (good + "\n[extra]\n", "unknown table"),
        ("not toml = = =", "cannot read"),
    ]:
        path = tmp_path / "p.toml"
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ProfileError, match=re.escape(message)):
            load_profile(path, tasks=TASKS)


def test_a_text_only_profile_refuses_images(tmp_path: Path) -> None:
    text = (MODELS / f"{NAME}.toml").read_text(encoding="utf-8")
    (tmp_path / f"{NAME}.toml").write_text(
        text.replace('modalities = ["text", "image"]', 'modalities = ["text"]'), encoding="utf-8"
    )
    router = CapabilityRouter.from_files(ROUTING, tmp_path, served_names=(NAME,))
    decision = router.route([TurnView("user", "Describe this image", 1)], model=NAME)
    assert decision.action == "refuse"
    assert "cannot accept images" in (decision.refusal or "")
    assert router.route([TurnView("user", "hello", 0)], model=NAME).action == "proceed"


def test_tools_are_declared_per_profile_and_off_by_default(
    router: CapabilityRouter, tmp_path: Path
) -> None:
    qwen = router.profile("local")
    assert qwen.tools  # Qwen3-VL's template renders tools and Hermes-style calls
    assert qwen.to_capabilities().supports_tools
    text = (MODELS / f"{NAME}.toml").read_text(encoding="utf-8")
    path = tmp_path / "quiet.toml"
    path.write_text(text.replace("tools = true", ""), encoding="utf-8")
    quiet = load_profile(path, tasks=TASKS)
    assert not quiet.tools
    assert not quiet.to_capabilities().supports_tools
