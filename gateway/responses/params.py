"""Errors of the chat pipeline, renamed to the Responses request's fields.

The pipeline names chat's fields (``messages[2].content[1].image_url``, ``response_format``,
``tools[0].function.parameters``); a Responses client sent ``input[1].content[1].image_url``,
``text.format``, ``tools[0].parameters``. Each chat message's ``Origin`` says which request field
it came from; errors inside a stored item (``previous_response_id``), the string form of
``input`` or ``instructions`` name that whole field.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError

__all__ = ("Origin", "response_param", "response_params")


@dataclass(frozen=True)
class Origin:
    """Where a chat message came from: the request field, and what its content is called
    there (empty: errors inside it name the whole field)."""

    param: str
    content: str = ""


_MESSAGE = re.compile(r"^messages\[(\d+)\](?:\.(\w+))?(.*)$")
_TOOL = re.compile(r"^tools\[(\d+)\]\.function(.*)$")
_RENAMED = {
    "messages": "input",
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
}


def response_param(param: str | None, origins: Sequence[Origin]) -> str | None:
    """A chat ``param`` as the Responses request's field."""
    if param is None or param in _RENAMED:
        return _RENAMED.get(param or "", param)
    if param.startswith("response_format."):
        return "text.format"
    if tool := _TOOL.match(param):
        return f"tools[{tool[1]}]{tool[2]}"
    message = _MESSAGE.match(param)
    if message is None:
        return param
    index, field, rest = int(message[1]), message[2], message[3]
    if index >= len(origins):
        return "input"
    origin = origins[index]
    if origin.content and field == "content":
        return f"{origin.param}.{origin.content}{rest}"
    if origin.content and field == "tool_call_id":
        return f"{origin.param}.call_id"
    return origin.param


@contextlib.contextmanager
def response_params(origins: Sequence[Origin]) -> Iterator[None]:
    """Errors raised inside name the Responses request's fields."""
    try:
        yield
    except GatewayError as exc:
        exc.param = response_param(exc.param, origins)
        raise
