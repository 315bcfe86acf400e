"""Task classification: which of eight tasks a chat request asks for, by weighted rules from config.

Policy (all numbers are configuration, ``[classifier]`` in ``config/routing.toml``):

- No image anywhere in the conversation: ``text``, whatever the words say.
- Otherwise the latest user turn is scored: each rule whose pattern matches adds its weight to its
  task once. Text is NFKC-normalised, lower-cased and stripped of apostrophes first (so rules say
  ``dont``), and Chinese needs no word segmentation because patterns match substrings.
- Negation: a cue (``don't``, ``no need to``, ``不要``, ``而不是``) negates the rest of its
  clause, up to punctuation or a contrast word (``but``, ``just``, ``只``); a negated match adds
  ``weight * negation_factor`` (negative) instead. "Don't describe it, just read the text" is OCR.
- Quoted spans (``"..."``, ``“...”``, ``「...」``) are the user's data, not instructions; they are
  ignored unless that leaves no signal at all.
- If the best latest-turn score reaches ``min_score`` it wins, with earlier user turns and the
  system message added at ``context_weight`` to break near-ties. Otherwise the conversation
  decides alone (follow-ups such as "and the second one?"), then ``empty_prompt_task`` for an
  image with no words, then ``fallback_task``. Exact ties go to the earlier task in ``tie_order``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = (
    "TASKS",
    "VISION_TASKS",
    "Classification",
    "ClassifierConfig",
    "Rule",
    "TaskClassifier",
    "TurnView",
    "normalise",
)

TASKS: tuple[str, ...] = (
    "ocr", "document", "chart", "math", "grounding", "describe", "general", "text",
)  # fmt: skip
"""Every task name, as used in headers, metrics labels and configuration."""
VISION_TASKS: tuple[str, ...] = TASKS[:-1]

_APOSTROPHES = re.compile(r"['’`´]")
_SPACES = re.compile(r"\s+")
# A space between CJK and Latin/digits lets English rules use \b in mixed text ("帮我ocr一下").
_CJK_LATIN = re.compile(r"(?<=[\u3400-\u9fff])(?=[a-z0-9])|(?<=[a-z0-9])(?=[\u3400-\u9fff])")
_QUOTED = re.compile(r'"[^"\n]{1,80}"|“[^”\n]{1,80}”|「[^」\n]{1,80}」|『[^』\n]{1,80}』')
_NUMBERS: dict[str, type[int] | type[float]] = {
    "negation_factor": float, "min_score": float, "context_weight": float,
    "context_decay": float, "context_turns": int, "system_weight": float,
}  # fmt: skip
_PUNCTUATION = r"[,.;:!?()\[\]\n，。；：！？、（）—]"


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
    """Best latest-turn score needed for the latest turn to decide alone."""
    context_weight: float = 0.25
    """Share of the conversation's score added to a decisive latest turn (tie-breaking)."""
    context_decay: float = 0.5
    """Weight of each earlier user turn relative to the one after it."""
    context_turns: int = 4
    """Earlier user turns considered."""
    system_weight: float = 0.5
    """Weight of system-message text in the conversation score."""
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
        for key in ("negation", "scope_breaks"):
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


@dataclass(frozen=True)
class Classification:
    """The classifier's answer and why."""

    task: str
    """One of ``TASKS``."""
    source: str
    """``no_image``, ``latest``, ``context``, ``empty`` or ``fallback``."""
    scores: Mapping[str, float]
    """Final score per task that had any signal."""
    languages: tuple[str, ...] = ()
    """Language codes the latest user turn names (``ja`` for "read the Japanese text")."""


class TaskClassifier:
    """Scores turns with ``ClassifierConfig`` rules; pure and thread-safe (compiled regexes)."""

    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config
        self._negation = re.compile(config.negation)
        self._clause = re.compile(f"{_PUNCTUATION}|{config.scope_breaks}")

    def classify(self, turns: Sequence[TurnView]) -> Classification:
        cfg = self.config
        if not any(t.image_count > 0 for t in turns):
            return Classification("text", "no_image", {})
        users = [t for t in turns if t.role == "user"]
        latest_text = users[-1].text if users else ""
        latest = self.score(latest_text)
        context: dict[str, float] = {}
        for k, turn in enumerate(reversed(users[:-1][-cfg.context_turns :] if users else [])):
            _add(context, self.score(turn.text), cfg.context_decay**k)
        for turn in turns:
            if turn.role == "system":
                _add(context, self.score(turn.text), cfg.system_weight)
        languages = self.languages(latest_text)
        if _best(latest) >= cfg.min_score:
            final = dict(latest)
            _add(final, context, cfg.context_weight)
            return Classification(self._pick(final), "latest", final, languages)
        if _best(context) >= cfg.min_score:
            return Classification(self._pick(context), "context", context, languages)
        if not normalise(latest_text):
            return Classification(cfg.empty_prompt_task, "empty", latest, languages)
        return Classification(cfg.fallback_task, "fallback", latest, languages)

    def score(self, text: str) -> dict[str, float]:
        """Per-task rule score of one text (quoted spans ignored when something else speaks)."""
        norm = normalise(text)
        if self.config.ignore_quoted:
            scores = self._score(_QUOTED.sub(" ", norm))
            if _best(scores) >= self.config.min_score:
                return scores
        return self._score(norm)

    def languages(self, text: str) -> tuple[str, ...]:
        """Language codes a text names outside negated scopes, in configuration order."""
        norm = normalise(text)
        negated = self._negated_spans(norm)
        return tuple(
            code
            for code, pattern in self.config.languages.items()
            if any(not _inside(m.start(), negated) for m in pattern.finditer(norm))
        )

    def _score(self, norm: str) -> dict[str, float]:
        negated = self._negated_spans(norm)
        scores: dict[str, float] = {}
        for rule in self.config.rules:
            hits = [_inside(m.start(), negated) for m in rule.pattern.finditer(norm)]
            if not hits:
                continue
            factor = 1.0 if not all(hits) else self.config.negation_factor
            scores[rule.task] = scores.get(rule.task, 0.0) + rule.weight * factor
        return scores

    def _negated_spans(self, norm: str) -> list[tuple[int, int]]:
        bounds = [
            0,
            *(p for m in self._clause.finditer(norm) for p in (m.start(), m.end())),
            len(norm),
        ]
        spans = []
        for start, end in zip(bounds[::2], bounds[1::2], strict=False):
            cue = self._negation.search(norm, start, end)
            if cue is not None:
                spans.append((cue.end(), end))
        return spans

    def _pick(self, scores: Mapping[str, float]) -> str:
        order = self.config.tie_order
        return max(scores, key=lambda t: (scores[t], -order.index(t)))


def _inside(pos: int, spans: Iterable[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


def _best(scores: Mapping[str, float]) -> float:
    return max(scores.values(), default=0.0)


def _add(into: dict[str, float], scores: Mapping[str, float], weight: float) -> None:
    for task, value in scores.items():
        into[task] = into.get(task, 0.0) + value * weight
