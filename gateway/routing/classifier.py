"""Task classification: which of eight tasks a chat request asks for, by weighted rules from config.

Policy (all numbers are configuration, ``[classifier]`` in ``config/routing.toml``):

- No image anywhere in the conversation so far: ``text``, whatever the words say.
- A user turn is scored: each rule whose pattern matches adds its weight to its task once. Text is
  NFKC-normalised, lower-cased and stripped of apostrophes first (so rules say ``dont``), and
  Chinese needs no word segmentation because patterns match substrings.
- Negation: a cue (``don't``, ``no need to``, ``不要``, ``而不是``) negates the rest of its
  clause, up to punctuation or a contrast word (``but``, ``just``, ``只``); a negated match adds
  ``weight * negation_factor`` (negative) instead. "Don't describe it, just read the text" is OCR.
- Quoted spans (``"..."``, ``“...”``, ``「...」``) are the user's data, not instructions; they are
  ignored unless that leaves no signal at all.
- Conversations are read turn by turn (the last ``context_turns`` + 1 user turns), each turn
  classified with the one before it. A later turn adds to the previous turn's task up to
  ``follow_up_weight`` when it is elliptical (matches ``follow_up``: "and the next one?", "the
  second line?", "那第二行呢？") and up to ``continuation_weight`` otherwise, but never more than
  that turn's margin; so a follow-up without a strong cue of its own keeps the task, and a strong
  new cue still wins. A turn whose best score stays under ``min_score`` keeps the previous task.
- Without a usable previous turn (none, no image yet, or a fallback), a turn reaching
  ``min_score`` wins, with earlier user turns and the system message added at ``context_weight``
  to break near-ties; otherwise the conversation decides alone, then ``empty_prompt_task`` for
  an image with no words, then ``fallback_task``. Exact ties go to the earlier task in
  ``tie_order``.
- Margin: the chosen task's final score minus the best other task's (a task without signal
  counts 0), never below 0; 0 for ``empty`` and ``fallback``, infinite for ``no_image``. The
  router refuses only decisions whose margin reaches ``router.refuse_min_margin``.
- ``TaskClassifier.read`` reads a conversation once (each text scored once) to classify its
  earlier user turns too, each as it was when it was the latest (``Reading.at``): the router's
  instruction and image budgets follow those turns (``gateway.routing.conversation``).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.routing.rules import (
    TASKS,
    VISION_TASKS,
    ClassifierConfig,
    Rule,
    TurnView,
    normalise,
)

__all__ = (
    "TASKS",
    "VISION_TASKS",
    "Classification",
    "ClassifierConfig",
    "Reading",
    "Rule",
    "TaskClassifier",
    "TurnView",
    "normalise",
)

_QUOTED = re.compile(r'"[^"\n]{1,80}"|“[^”\n]{1,80}”|「[^」\n]{1,80}」|『[^』\n]{1,80}』')
_PUNCTUATION = r"[,.;:!?()\[\]\n，。；：！？、（）—]"


@dataclass(frozen=True)
class Classification:
    """The classifier's answer and why."""

    task: str
    """One of ``TASKS``."""
    source: str
    """``no_image``, ``latest`` (the turn's own words), ``follow_up`` (the previous turn's task,
    kept), ``context`` (earlier turns and system message), ``empty`` or ``fallback``."""
    scores: Mapping[str, float]
    """Final score per task that had any signal."""
    languages: tuple[str, ...] = ()
    """Language codes the latest user turn names (``ja`` for "read the Japanese text")."""
    margin: float = 0.0
    """How far the chosen task's final score is ahead of the next task's (>= 0)."""


class TaskClassifier:
    """Scores turns with ``ClassifierConfig`` rules; pure and thread-safe (compiled regexes)."""

    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config
        self._negation = re.compile(config.negation)
        self._clause = re.compile(f"{_PUNCTUATION}|{config.scope_breaks}")
        self._follow_up = re.compile(config.follow_up)

    def classify(self, turns: Sequence[TurnView]) -> Classification:
        """The task of the conversation's last user turn, read with the turns before it."""
        return self.read(turns).latest()

    def read(self, turns: Sequence[TurnView]) -> Reading:
        """The conversation read once, to classify its latest turn and earlier ones as they
        were classified when each was the latest (``Reading``)."""
        return Reading(self, turns)

    def is_follow_up(self, text: str) -> bool:
        """Whether a turn is elliptical: it continues the previous task ("and the next one?")."""
        return self._follow_up.search(normalise(text)) is not None

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

    def _classify(
        self, reading: Reading, end: int, previous: Classification | None
    ) -> Classification:
        """The classification of ``turns[:end]``, whose last user turn is the latest."""
        cfg = self.config
        if reading.first_image >= end:
            return Classification("text", "no_image", {}, margin=math.inf)
        users = range(bisect.bisect_left(reading.users, end))  # positions in reading.users
        last = reading.users[users[-1]] if users else None
        latest, languages = reading.scored(last)
        if previous is not None and previous.task != "text" and previous.source != "fallback":
            elliptical = reading.follow_up(last)
            weight = cfg.follow_up_weight if elliptical else cfg.continuation_weight
            final = dict(latest)
            _add(final, {previous.task: min(weight, previous.margin)}, 1.0)
            task = self._pick(final)
            if final[task] < cfg.min_score:
                task = previous.task
            kept = task == previous.task and latest.get(task, 0.0) < cfg.min_score
            source = "follow_up" if kept else "latest"
            return Classification(task, source, final, languages, _margin(final, task))
        context: dict[str, float] = {}
        for k, n in enumerate(reversed(users[:-1][-cfg.context_turns :])):
            _add(context, reading.scored(reading.users[n])[0], cfg.context_decay**k)
        _add(context, reading.system_context(end), 1.0)
        if _best(latest) >= cfg.min_score:
            final = dict(latest)
            _add(final, context, cfg.context_weight)
            task = self._pick(final)
            return Classification(task, "latest", final, languages, _margin(final, task))
        if _best(context) >= cfg.min_score:
            task = self._pick(context)
            return Classification(task, "context", context, languages, _margin(context, task))
        if not normalise(reading.text(last)):
            return Classification(cfg.empty_prompt_task, "empty", latest, languages)
        return Classification(cfg.fallback_task, "fallback", latest, languages)

    def _chain(self, reading: Reading, end: int) -> Classification:
        """``turns[:end]``'s latest user turn, each of the turns before it read in turn."""
        users = range(bisect.bisect_left(reading.users, end))
        previous: Classification | None = None
        for n in users[-self.config.context_turns - 1 : -1]:
            previous = self._classify(reading, reading.users[n] + 1, previous)
        return self._classify(reading, end, previous)

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


class Reading:
    """One conversation read by a ``TaskClassifier``; each text is scored at most once.

    ``latest()`` is ``TaskClassifier.classify`` of the conversation; ``at(n)`` is the
    classification its n-th user turn (from 0) got when it was the latest, read with the turns up
    to and including it. So classifying every user turn again costs one reading of each text.
    """

    def __init__(self, classifier: TaskClassifier, turns: Sequence[TurnView]) -> None:
        self.turns = turns
        self.users = [i for i, t in enumerate(turns) if t.role == "user"]
        """Indexes of the user turns in ``turns``."""
        self.first_image = next((i for i, t in enumerate(turns) if t.image_count), len(turns))
        """Index of the first turn with an image (``len(turns)`` when none has one)."""
        self._classifier = classifier
        self._systems = [i for i, t in enumerate(turns) if t.role == "system"]
        self._system_context: list[dict[str, float]] = [{}]
        self._scored: dict[int | None, tuple[dict[str, float], tuple[str, ...]]] = {}
        self._at: dict[int, Classification] = {}

    def latest(self) -> Classification:
        return self._classifier._chain(self, len(self.turns))

    def at(self, n: int) -> Classification:
        if n not in self._at:
            self._at[n] = self._classifier._chain(self, self.users[n] + 1)
        return self._at[n]

    def text(self, index: int | None) -> str:
        return "" if index is None else self.turns[index].text

    def scored(self, index: int | None) -> tuple[dict[str, float], tuple[str, ...]]:
        """Rule scores and named languages of a turn's text (None: no user turn, no text)."""
        if index not in self._scored:
            text = self.text(index)
            self._scored[index] = (self._classifier.score(text), self._classifier.languages(text))
        return self._scored[index]

    def follow_up(self, index: int | None) -> bool:
        return self._classifier.is_follow_up(self.text(index))

    def system_context(self, end: int) -> dict[str, float]:
        """The weighted scores of the system turns among ``turns[:end]``, summed in order."""
        count = bisect.bisect_left(self._systems, end)
        weight = self._classifier.config.system_weight
        while len(self._system_context) <= count:
            summed = dict(self._system_context[-1])
            index = self._systems[len(self._system_context) - 1]
            _add(summed, self._classifier.score(self.turns[index].text), weight)
            self._system_context.append(summed)
        return self._system_context[count]


def _inside(pos: int, spans: Iterable[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


def _best(scores: Mapping[str, float]) -> float:
    return max(scores.values(), default=0.0)


def _margin(scores: Mapping[str, float], task: str) -> float:
    """The chosen task's lead over the best other task (no signal counts 0), at least 0."""
    runner_up = max((v for t, v in scores.items() if t != task), default=0.0)
    return max(0.0, scores.get(task, 0.0) - max(0.0, runner_up))


def _add(into: dict[str, float], scores: Mapping[str, float], weight: float) -> None:
    for task, value in scores.items():
        into[task] = into.get(task, 0.0) + value * weight
