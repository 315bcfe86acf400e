"""Wire types of function calling, with OpenAI's field names (re-exported by ``protocol``).

Requests: ``tools`` (``ToolWire``), ``tool_choice`` (``ToolChoiceWire``), an assistant message's
``tool_calls`` (``ToolCallWire``). Responses: the same ``ToolCallWire`` in ``message.tool_calls``,
and ``ChunkToolCall`` pieces in a stream chunk's ``delta.tool_calls``: the first piece of a call
carries ``id``, ``type`` and ``function.name`` (with ``arguments: ""``), later ones only
``function.arguments``, as OpenAI streams them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = (
    "MAX_TOOLS",
    "ChunkFunction",
    "ChunkToolCall",
    "FunctionCallWire",
    "FunctionWire",
    "NamedFunction",
    "NamedToolChoice",
    "ToolCallWire",
    "ToolChoiceWire",
    "ToolWire",
)

MAX_TOOLS = 128
"""Tools per request, at most (OpenAI's limit)."""

FunctionName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
"""OpenAI's rule for function names: 1-64 letters, digits, underscores and dashes."""


class FunctionWire(Struct, forbid_unknown_fields=False):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments object; absent: a function without parameters."""
    strict: bool | None = None


class ToolWire(Struct, forbid_unknown_fields=False):
    type: Literal["function"]
    function: FunctionWire


class NamedFunction(Struct, forbid_unknown_fields=False):
    name: Annotated[str, Meta(min_length=1)]


class NamedToolChoice(Struct, forbid_unknown_fields=False):
    type: Literal["function"]
    function: NamedFunction


ToolChoiceWire = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallWire(Struct, forbid_unknown_fields=False):
    name: str
    arguments: str
    """JSON text of the arguments object (OpenAI sends a string, never an object)."""


class ToolCallWire(Struct, kw_only=True, forbid_unknown_fields=False):
    """A complete call: in an assistant message of a request, and in a response message.
    (``kw_only``: fields encode in OpenAI's order, defaults among them.)"""

    id: Annotated[str, Meta(min_length=1)]
    type: Literal["function"] = "function"
    function: FunctionCallWire


class ChunkFunction(Struct):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class ChunkToolCall(Struct, kw_only=True):
    """One piece of call ``index`` in a stream chunk (absent fields are omitted, not null)."""

    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: ChunkFunction
