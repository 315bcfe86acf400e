"""Stop sequences cut exactly as OpenAI does.

The completion ends before the first occurrence of any stop string, which is not returned.
While streaming, text that might be the start of a stop string is held back until it is
known not to be one, so a client never sees a partial stop sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ("StopMatcher",)


class StopMatcher:
    """Incremental stop-string matcher over decoded text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add newly decoded text; return what is safe to emit now.

        After a stop string is seen, ``stopped`` is true and further input is ignored.
        """
        if self.stopped:
            return ""
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buffer[:cut]
        hold = self._held_suffix(buffer)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """At end of generation: release any held text (it was not a stop string)."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest
