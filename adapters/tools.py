"""Function calling in the backend contract: the tools a request offers, the calls a model makes,
and the stream event that carries a call (re-exported by ``adapters.base``).

A call streams as OpenAI frames it: the first ``ToolCallDelta`` of call ``index`` carries its
``id`` and ``name``; later ones append to ``arguments`` (JSON text). ``collect`` assembles them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ("ToolCall", "ToolCallDelta", "ToolChoice", "ToolSpec", "Tools", "assemble_calls")

ToolChoice = Literal["none", "auto", "required", "function"]
"""``none``: tools are described but no call may be made; ``auto``: the model chooses text or
calls; ``required``: at least one call; ``function``: a call of ``Tools.function``."""


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments object; None: any object."""
    strict: bool = False

    def as_openai(self) -> dict[str, Any]:
        """OpenAI's ``{"type": "function", "function": {...}}`` (chat templates and upstreams
        take this shape)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.parameters
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class Tools:
    """The tools of a request and how they may be used."""

    specs: tuple[ToolSpec, ...]
    choice: ToolChoice = "auto"
    function: str | None = None
    """The function that must be called when ``choice`` is ``function``."""
    parallel: bool = True
    """Several calls in one answer allowed (``parallel_tool_calls``)."""

    @property
    def callable(self) -> tuple[ToolSpec, ...]:
        """The specs a call may name (none under ``none``; the named one under ``function``)."""
        if self.choice == "none":
            return ()
        if self.choice == "function":
            return tuple(s for s in self.specs if s.name == self.function)
        return self.specs


@dataclass(frozen=True)
class ToolCall:
    """A complete call: ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of call ``index`` (0-based within the answer): its first piece carries ``id``
    and ``name``, every piece may append ``arguments`` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def assemble_calls(deltas: Iterable[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """The complete calls from their pieces, in index order."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, ["", "", ""])
        call[0] = delta.id or call[0]
        call[1] = delta.name or call[1]
        call[2] += delta.arguments
    return tuple(ToolCall(*calls[i]) for i in sorted(calls))
