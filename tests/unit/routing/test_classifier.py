"""Classifier behaviour: negation, quoting, languages, context, and rule configuration errors."""

from __future__ import annotations

from typing import Any

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
    assert (result.task, result.source) == ("ocr", "follow_up")
    # A decisive latest turn wins over the conversation.
    turns[-1] = TurnView("user", "Where is the page number?", 0)
    assert classifier.classify(turns).task == "grounding"
    # Assistant text never steers the task.
    turns = [TurnView("user", "hi", 1), TurnView("assistant", "Solve the equation", 0)]
    assert classifier.classify([*turns, TurnView("user", "ok", 0)]).task == "general"
    # Earlier turns without an image are no task to keep; their words still count as context.
    turns = [
        TurnView("user", "Can you transcribe a photo for me?", 0),
        TurnView("assistant", "Sure, send it.", 0),
        TurnView("user", "here", 1),
    ]
    assert (classifier.classify(turns).task, classifier.classify(turns).source) == (
        "ocr",
        "context",
    )


SHAPES = "A red rectangle and a blue circle on a beige background."


@pytest.mark.parametrize(
    "text",
    [
        "And the circle colour?",
        "Is this triangle red?",
        "How big is the red rectangle compared to the circle?",
        "这个三角形是红色的吗",
        "Which is bigger, the circle or the triangle?",
    ],
)
def test_geometry_words_without_a_math_intent_are_not_math(
    classifier: TaskClassifier, text: str
) -> None:
    assert task(classifier, text) in ("describe", "general")


@pytest.mark.parametrize(
    "text",
    [
        "Find the area of the circle",
        "What's the area of the circle if r = 3?",
        "How many degrees is angle x?",
        "Prove the two triangles are congruent.",
        "Compute the total of 17, 28 and 56.",
        "求圆的半径",
        "求x",
        "证明三角形ABC是等腰三角形",
    ],
)
def test_a_math_intent_is_math(classifier: TaskClassifier, text: str) -> None:
    assert task(classifier, text) == "math"


def conversation(first: str, reply: str, then: str, images: int = 0) -> list[TurnView]:
    return [
        TurnView("user", first, 1),
        TurnView("assistant", reply, 0),
        TurnView("user", then, images),
    ]


@pytest.mark.parametrize(
    ("first", "then", "expected"),
    [
        ("Transcribe the text on this page", "And the second line?", "ocr"),
        ("Transcribe the text on this page", "the second line?", "ocr"),
        ("识别图中的文字", "那第二行呢？", "ocr"),
        ("What does the sign say?", "and the next one?", "ocr"),
        ("Read the numbers on this scoreboard", "what about the total?", "ocr"),
        ("Extract the line items of this receipt", "what about the total?", "document"),
        ("Find the area of the triangle", "What about the circle?", "math"),
        ("Give me the bounding box of the circle", "And the triangle?", "grounding"),
        ("What colour is the triangle?", "And the circle colour?", "describe"),
    ],
)
def test_follow_ups_keep_the_previous_task(
    classifier: TaskClassifier, first: str, then: str, expected: str
) -> None:
    result = classifier.classify(conversation(first, "...", then))
    assert result.task == expected
    assert result.source in ("follow_up", "latest")
    assert classifier.is_follow_up(then)


@pytest.mark.parametrize(
    ("first", "then", "expected"),
    [
        ("Find the area of the triangle", "Is this triangle red?", "describe"),
        ("Find the area of the triangle", "And the circle colour?", "describe"),
        ("Transcribe the text on this page", "Now describe the picture.", "describe"),
        ("Transcribe the text on this page", "And where is the logo?", "grounding"),
        ("Describe the photo", "What does the sign say?", "ocr"),
        ("What colour is the triangle?", "Now find its area given base 6 and height 4.", "math"),
    ],
)
def test_a_strong_new_cue_wins_over_the_conversation(
    classifier: TaskClassifier, first: str, then: str, expected: str
) -> None:
    assert classifier.classify(conversation(first, "...", then)).task == expected


def test_follow_up_is_the_previous_classified_turn_not_the_first(
    classifier: TaskClassifier,
) -> None:
    turns = [
        *conversation("Solve for x in the triangle", "x = 35", "What colour is the circle?"),
        TurnView("assistant", "Blue.", 0),
        TurnView("user", "And the triangle?", 0),
    ]
    result = classifier.classify(turns)
    assert (result.task, result.source) == ("describe", "follow_up")


def test_elliptical_turns(classifier: TaskClassifier) -> None:
    for text in ("And the VAT?", "what about the total?", "Next one?", "还有下面那段", "税呢？"):
        assert classifier.is_follow_up(text), text
    for text in ("And what does it say?", "Describe this picture", "那狗在什么位置呢？", ""):
        assert not classifier.is_follow_up(text), text


def test_margin_is_the_lead_over_the_next_task(classifier: TaskClassifier) -> None:
    solve = classifier.classify([TurnView("user", "Solve this integral step by step.", 1)])
    assert solve.task == "math"
    assert solve.margin == solve.scores["math"] - max(
        v for t, v in solve.scores.items() if t != "math"
    )
    close = classifier.classify([TurnView("user", "Integrate the function in this plot.", 1)])
    assert (close.task, close.margin) == ("math", 1.0)  # math 4 against chart 3
    assert classifier.classify([TurnView("user", "hmm", 1)]).margin == 0.0  # fallback
    assert classifier.classify([TurnView("user", "", 1)]).margin == 0.0  # empty
    assert classifier.classify([TurnView("user", "hi", 0)]).margin == float("inf")  # text
    # A follow-up inherits at most the previous turn's margin.
    follow = classifier.classify(conversation("Integrate the function in this plot.", "", "ok"))
    assert (follow.task, follow.source) == ("math", "follow_up")
    assert follow.margin <= close.margin


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
    with pytest.raises(ValueError, match="follow_up"):
        ClassifierConfig.from_table({"follow_up": ["(unclosed"]})
    with pytest.raises(ValueError, match="follow_up_weight"):
        ClassifierConfig.from_table({"follow_up_weight": "high"})
    with pytest.raises(TypeError):
        ClassifierConfig.from_table({"no_such_key": 1})


def test_weights_and_ties_come_from_config() -> None:
    table: dict[str, Any] = {
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
