from __future__ import annotations

import pytest

from adapters.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


@pytest.mark.parametrize(
    ("stops", "pieces", "expected", "stopped"),
    [
        (["\n"], ["Hello", " world\n", "more"], "Hello world", True),
        (["END"], ["abc", "E", "N", "D", "x"], "abc", True),
        (["END"], ["abc", "E", "N", "x"], "abcENx", False),
        (["ab", "b"], ["xab"], "x", True),  # earliest match wins, whichever stop it is
        (["b", "ab"], ["xab"], "x", True),
        (["stop"], ["st", "o", "p"], "", True),
        ([], ["a", "b"], "ab", False),
        ([""], ["a"], "a", False),  # an empty stop string never matches
    ],
)
def test_cuts_before_first_stop(
    stops: list[str], pieces: list[str], expected: str, stopped: bool
) -> None:
    assert run(stops, pieces) == (expected, stopped)


def test_partial_stop_is_held_back_while_streaming() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("text </e") == "text "
    assert matcher.feed("nd") == ""
    assert matcher.feed(">after") == ""
    assert matcher.stopped
    assert matcher.flush() == ""


def test_held_text_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("a </e") == "a "
    assert matcher.feed("x") == "</ex"
    assert matcher.flush() == ""
    matcher.feed("tail <")
    assert matcher.flush() == "<"
