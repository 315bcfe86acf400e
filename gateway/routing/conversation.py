"""Conversation-stable prompts: the router's instruction and the image budgets of a conversation.

An engine reuses its prefix cache (and its vision-feature cache) for a follow-up only when the
follow-up's prompt starts with the previous request's prompt: same system message, same images
at the same size. A client's own system message stays the same from turn to turn; the router's
must too, and an image must keep its size. So, when the classifier's latest task changes:

- The instruction is the task of the conversation's opening: its first user turn with an image,
  classified with the turns up to and including it, as it was when it was the latest turn. It is
  the same on every later turn. The latest task still sets everything else (sampling, warnings,
  a refusal or redirect, the ``x-gateway-task`` header).
- Each image's pixel budget is the largest among the budgets of the tasks of the user turns from
  the one that sent it to the latest (each turn's task as it was when that turn was the latest).
  An image keeps its size on later turns, and is encoded larger, once, when a later turn needs
  more pixels (a follow-up asking to read small print); it never shrinks.

Each earlier user turn is classified again from the opening on, reading each text once
(``gateway.routing.classifier.Reading``); budgets stop reading back once the largest is reached.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.routing.classifier import VISION_TASKS, Reading
from gateway.routing.config import TaskPolicy

__all__ = ("image_budgets", "opening_task")


def opening_task(reading: Reading) -> str | None:
    """The task of the first user turn with an image (None when no user turn has one)."""
    first = _first_image_turn(reading)
    return None if first is None else reading.at(first).task


def image_budgets(
    reading: Reading, latest: str, policies: Mapping[str, TaskPolicy], ceiling: int
) -> tuple[int, ...]:
    """One pixel budget per image of the user turns, in order (see the module doc).

    ``latest``: the task of the conversation's last user turn; ``ceiling``: the backend's
    ``max_pixels``, which also stands for a policy that sets none.
    """

    def budget(task: str) -> int:
        pixels = policies[task].max_pixels
        return min(pixels, ceiling) if pixels else ceiling

    first = _first_image_turn(reading)
    if first is None or latest == "text":
        return ()
    peak = max(budget(t) for t in VISION_TASKS if t in policies)
    counts = [reading.turns[i].image_count for i in reading.users]
    last = len(counts) - 1
    largest = budget(latest)
    budgets: list[int] = []
    for n in range(last, first - 1, -1):
        if n < last and largest < peak:
            largest = max(largest, budget(reading.at(n).task))
        budgets += [largest] * counts[n]
    budgets.reverse()
    return tuple(budgets)


def _first_image_turn(reading: Reading) -> int | None:
    """Position among the user turns of the first one with an image."""
    counts = (reading.turns[i].image_count for i in reading.users)
    return next((n for n, count in enumerate(counts) if count), None)
