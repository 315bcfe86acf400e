"""Classifier behaviour: negation, quoting, languages, context, and rule configuration errors."""

from __future__ import annotations

import pytest

from gateway.routing import CONFIG_DIR, CapabilityRouter
from gateway.routing.classifier import ClassifierConfig, TaskClassifier, TurnView, normalise


@pytest.fixture(scope="module")
def classifier() -> TaskClassifier:
    router = CapabilityRouter.from_files(CONFIG_DIR / "routing.toml", CONFIG_DIR / "models")
    return router.classifier


def task(classifier: TaskClassifier, text: str, images: int = 1) -> str:
    return classifier.classify([TurnView("user", text, images)]).task


def test_no_image_anywhere_is_text_whatever_the_words(classifier: TaskClassifier) -> None:
    assert task(classifier, "Draw a bounding box around the cat", images=0) == "text"
    assert task(classifier, "Draw a bounding box around the cat") == "grounding"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Describe the picture", "describe"),
        ("Don't describe the picture, just read the text", "ocr"),
        ("No need to transcribe anything, just describe the scene", "describe"),
        ("I don't want a description. Give me the coordinates of the dog", "grounding"),
        ("识别文字而不是描述图片", "ocr"),
        ("不要描述，直接框出所有的人", "grounding"),
        ("It's not a chart, it's a table: extract the rows", "document"),
    ],
)
def test_negation_flips_the_task(classifier: TaskClassifier, text: str, expected: str) -> None:
    assert task(classifier, text) == expected


def test_識別_is_not_the_negation_cue_別(classifier: TaskClassifier) -> None:
    # 别 ("don't") is a substring of 识别 ("recognise"): it must not negate what follows.
    assert task(classifier, "识别图中的文字") == "ocr"
    assert task(classifier, "别识别文字，描述一下这张图") == "describe"


def test_quoted_text_is_data_not_instruction(classifier: TaskClassifier) -> None:
    assert task(classifier, 'Where is the "Solve equation" button on this screen?') == "grounding"
    assert task(classifier, "图中“描述”两个字在什么位置？") == "grounding"
    # A prompt that is only a quotation still counts.
    assert task(classifier, '"describe this photo"') == "describe"


def test_chinese_without_spaces_full_width_and_mixed(classifier: TaskClassifier) -> None:
    assert task(classifier, "帮我把这张发票的金额和税号提取出来") == "document"
    assert task(classifier, "ＯＣＲ这张图") == "ocr"  # full-width Latin
    assert task(classifier, "帮我ocr一下") == "ocr"  # no space between scripts
    assert task(classifier, "这个bar chart里哪个category最大") == "chart"
    assert normalise("帮我ocr一下 What’s THIS") == "帮我 ocr 一下 whats this"


def test_where_is_an_object_vs_where_was_the_photo(classifier: TaskClassifier) -> None:
    assert task(classifier, "Where is the remote control?") == "grounding"
    assert task(classifier, "Where's the remote?") == "grounding"
    assert task(classifier, "Where was this photo taken?") == "general"
    assert task(classifier, "遥控器在哪里") == "grounding"
    assert task(classifier, "这张照片在哪里拍的") == "general"


def test_context_decides_follow_ups(classifier: TaskClassifier) -> None:
    turns = [
        TurnView("user", "Transcribe the text on this page", 1),
        TurnView("assistant", "Chapter one...", 0),
        TurnView("user", "Now this one", 1),
    ]
    result = classifier.classify(turns)
    assert (result.task, result.source) == ("ocr", "context")
    # A decisive latest turn wins over the conversation.
    turns[-1] = TurnView("user", "Where is the page number?", 0)
    assert classifier.classify(turns).task == "grounding"
    # Assistant text never steers the task.
    turns = [TurnView("user", "hi", 1), TurnView("assistant", "Solve the equation", 0)]
    assert classifier.classify([*turns, TurnView("user", "ok", 0)]).task == "general"


def test_system_message_is_context(classifier: TaskClassifier) -> None:
    turns = [TurnView("system", "You are an OCR engine. Transcribe text.", 0)]
    assert classifier.classify([*turns, TurnView("user", "here", 1)]).task == "ocr"


def test_image_without_words_and_fallback(classifier: TaskClassifier) -> None:
    empty = classifier.classify([TurnView("user", "", 1)])
    assert (empty.task, empty.source) == ("describe", "empty")
    other = classifier.classify([TurnView("user", "hmm, interesting", 1)])
    assert (other.task, other.source) == ("general", "fallback")


def test_requested_languages(classifier: TaskClassifier) -> None:
    assert classifier.languages("Read the Japanese text on this sign") == ("ja",)
    assert classifier.languages("Translate the sign into Japanese") == ()
    assert classifier.languages("把图中的韩文翻译成中文") == ("ko",)
    assert classifier.languages("Don't worry about the Arabic, read the English") == ("en",)


def test_config_rejects_bad_rules() -> None:
    with pytest.raises(ValueError, match="vision task"):
        ClassifierConfig.from_table({"rules": [{"task": "text", "patterns": ["x"]}]})
    with pytest.raises(ValueError, match="invalid regex"):
        ClassifierConfig.from_table({"rules": [{"task": "ocr", "patterns": ["(unclosed"]}]})
    with pytest.raises(ValueError, match="tie_order"):
        ClassifierConfig.from_table({"tie_order": ["ocr"]})
    with pytest.raises(TypeError):
        ClassifierConfig.from_table({"no_such_key": 1})


def test_weights_and_ties_come_from_config() -> None:
    table = {
        "rules": [
            {"task": "ocr", "weight": 2, "patterns": ["alpha"]},
            {"task": "chart", "weight": 2, "patterns": ["beta"]},
        ],
        "tie_order": ["chart", "ocr", "document", "math", "grounding", "describe", "general"],
    }
    clf = TaskClassifier(ClassifierConfig.from_table(table))
    assert clf.classify([TurnView("user", "alpha beta", 1)]).task == "chart"
    table["rules"][0]["weight"] = 3
    clf = TaskClassifier(ClassifierConfig.from_table(table))
    assert clf.classify([TurnView("user", "alpha beta", 1)]).task == "ocr"
