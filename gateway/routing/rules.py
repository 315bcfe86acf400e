"""The classifier's configuration: task names, turn views, weighted rules, ``[classifier]``.

Everything here is data read from ``config/routing.toml``; the scoring that uses it is
``gateway.routing.classifier``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ("TASKS", "VISION_TASKS", "ClassifierConfig", "Rule", "TurnView", "normalise")

TASKS: tuple[str, ...] = (
    "ocr", "document", "chart", "math", "grounding", "describe", "general", "text",
)  # fmt: skip
"""Every task name, as used in headers, metrics labels and configuration."""
VISION_TASKS: tuple[str, ...] = TASKS[:-1]

_APOSTROPHES = re.compile(r"['’`´]")
_SPACES = re.compile(r"\s+")
# A space between CJK and Latin/digits lets English rules use \b in mixed text ("帮我ocr一下").
_CJK_LATIN = re.compile(r"(?<=[\u3400-\u9fff])(?=[a-z0-9])|(?<=[a-z0-9])(?=[\u3400-\u9fff])")
_NUMBERS: dict[str, type[int] | type[float]] = {
    "negation_factor": float, "min_score": float, "context_weight": float,
    "context_decay": float, "context_turns": int, "system_weight": float,
    "follow_up_weight": float, "continuation_weight": float,
}  # fmt: skip
_REGEX_LISTS = ("negation", "scope_breaks", "follow_up")


@dataclass(frozen=True)
class TurnView:
    """A neutral view of one wire message: its role, its text parts joined, its image count."""

    role: str
    """``system``, ``user`` or ``assistant`` (others are ignored)."""
    text: str
    """The message's text parts joined with newlines."""
    image_count: int = 0
    """Image parts in the message."""


@dataclass(frozen=True)
class Rule:
    """Patterns that, when one matches, add ``weight`` to ``task`` (once per text)."""

    task: str
    """One of ``VISION_TASKS``."""
    weight: float
    """Score added on a match; negative weights veto (``where was this photo taken``)."""
    pattern: re.Pattern[str]
    """The rule's patterns joined as one alternation."""
    lang: str = "any"
    """Language the rule is written for (``en``, ``zh``, ``any``): documentation and audits."""


@dataclass(frozen=True)
class ClassifierConfig:
    """The ``[classifier]`` table of ``config/routing.toml``."""

    rules: tuple[Rule, ...] = ()
    """Weighted pattern rules (``[[classifier.rules]]``)."""
    negation: str = r"(?!x)x"
    """Regex of cues that negate the rest of their clause."""
    scope_breaks: str = r"(?!x)x"
    """Regex of contrast words that end a negated scope (punctuation always does)."""
    negation_factor: float = -0.5
    """Multiplier for the weight of a negated match."""
    min_score: float = 1.5
    """Best score a turn needs for its words to decide (below it: conversation, then fallback)."""
    context_weight: float = 0.25
    """Share of the conversation's score added to a decisive first turn (tie-breaking)."""
    context_decay: float = 0.5
    """Weight of each earlier user turn relative to the one after it."""
    context_turns: int = 4
    """Earlier user turns considered (for the conversation score and for follow-ups)."""
    system_weight: float = 0.5
    """Weight of system-message text in the conversation score."""
    follow_up: str = r"(?!x)x"
    """Regex of elliptical turns ("and the next one?", "那第二行呢？") that continue a task."""
    follow_up_weight: float = 3.5
    """Most an elliptical turn adds to the previous turn's task (at most that turn's margin)."""
    continuation_weight: float = 2.0
    """Most any other later turn adds to the previous turn's task (at most its margin)."""
    ignore_quoted: bool = True
    """Ignore quoted spans (the user's data) unless that leaves no signal."""
    empty_prompt_task: str = "describe"
    """Task for an image sent without words and without usable context."""
    fallback_task: str = "general"
    """Task when an image is present but no rule gives a signal."""
    tie_order: tuple[str, ...] = VISION_TASKS
    """Preference among tasks with exactly equal scores, first wins."""
    languages: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    """Per language code, a regex for prompts naming that language (``japanese``, ``日文``)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ClassifierConfig:
        """Build from the parsed ``[classifier]`` TOML table; raises ``ValueError`` on bad keys."""
        data = dict(table)
        rules = []
        for i, raw in enumerate(data.pop("rules", [])):
            if raw.get("task") not in VISION_TASKS or not raw.get("patterns"):
                raise ValueError(f"classifier.rules[{i}] needs a vision task and patterns")
            if set(raw) - {"task", "weight", "patterns", "lang"}:
                raise ValueError(f"classifier.rules[{i}] has unknown keys")
            joined = "|".join(f"(?:{p})" for p in raw["patterns"])
            rules.append(
                Rule(raw["task"], float(raw.get("weight", 1.0)), _compile(joined, f"rules[{i}]"),
                     raw.get("lang", "any"))
            )  # fmt: skip
        for key, kind in _NUMBERS.items():
            if key in data:
                if isinstance(data[key], bool) or not isinstance(data[key], int | float):
                    raise ValueError(f"classifier.{key} must be a number")
                data[key] = kind(data[key])
        if not isinstance(data.get("ignore_quoted", True), bool):
            raise ValueError("classifier.ignore_quoted must be true or false")
        for key in _REGEX_LISTS:
            if key in data:
                data[key] = "|".join(f"(?:{p})" for p in data[key])
                _compile(data[key], key)
        data["languages"] = {
            code: _compile("|".join(f"(?:{p})" for p in pats), f"languages.{code}")
            for code, pats in data.get("languages", {}).items()
        }
        if "tie_order" in data:
            data["tie_order"] = tuple(data["tie_order"])
            if sorted(data["tie_order"]) != sorted(VISION_TASKS):
                raise ValueError("classifier.tie_order must list every vision task once")
        for key in ("empty_prompt_task", "fallback_task"):
            if key in data and data[key] not in VISION_TASKS:
                raise ValueError(f"classifier.{key} must be a vision task")
        return cls(rules=tuple(rules), **data)


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"classifier.{where}: invalid regex ({exc.msg})") from exc


def normalise(text: str) -> str:
    """NFKC (full-width to ASCII), lower case, no apostrophes, CJK/Latin spaced, one space."""
    text = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", text).lower())
    return _SPACES.sub(" ", _CJK_LATIN.sub(" ", text)).strip()
