"""A request's ``input`` as canonical items, and the request body decoded.

Each raw input item is converted by its ``type`` (a message when absent, as OpenAI's
``EasyInputMessage``), so a refusal names the exact item and field. Ids the client sends back
(ours, from an earlier response) are kept; items without one get a fresh id, so every stored item
can be a cursor of ``GET .../input_items``. Text parts take the tag of their role (``output_text``
for the assistant, ``input_text`` otherwise), the shapes OpenAI lists them in.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.errors import InvalidJSON, InvalidValue, UnsupportedParameter
from gateway.responses.protocol import (
    ContentPart,
    CreateResponse,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputFile,
    InputImage,
    InputText,
    Item,
    MessageItem,
    OutputText,
    Refusal,
)

__all__ = ("ParamItem", "decode_create", "input_items", "new_item_id")

ParamItem = tuple[Item, str]
"""A canonical item and the ``param`` of the request field it came from."""

# Item types OpenAI defines that belong to its hosted tools, reasoning models or server-side
# state; refused by name rather than as an unknown value.
_SERVED = ("message", "function_call", "function_call_output")


class _Message(Struct, forbid_unknown_fields=False):
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


class _FunctionCall(Struct, forbid_unknown_fields=False):
    call_id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    arguments: str
    id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


class _FunctionCallOutput(Struct, forbid_unknown_fields=False):
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[InputText | InputImage | InputFile]
    id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


_decoder = msgspec.json.Decoder(CreateResponse)


def decode_create(body: bytes) -> CreateResponse:
    """Parse a request body; every failure is a 400 naming the offending field."""
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, "") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON(
            "The request body is not valid JSON (it must be UTF-8 encoded and nested at most "
            "a few hundred levels deep)."
        ) from None
    return request


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def input_items(value: str | list[dict[str, Any]] | None) -> list[ParamItem]:
    """The request's ``input`` as canonical items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        message = MessageItem(id=new_item_id("msg"), role="user", content=[InputText(value)])
        return [(message, "input")]
    return [(_item(raw, f"input[{i}]"), f"input[{i}]") for i, raw in enumerate(value)]


def _item(raw: dict[str, Any], where: str) -> Item:
    kind = raw.get("type") or "message"  # OpenAI's EasyInputMessage may omit it, or send null
    if kind not in _SERVED:
        raise UnsupportedParameter(
            f"Input items of type '{str(kind)[:64]}' are not supported by this server; it "
            "serves 'message', 'function_call' and 'function_call_output' items.",
            param=f"{where}.type",
        )
    try:
        if kind == "function_call":
            call = msgspec.convert(raw, _FunctionCall)
            return FunctionCallItem(
                id=call.id or new_item_id("fc"),
                call_id=call.call_id,
                name=call.name,
                arguments=call.arguments,
            )
        if kind == "function_call_output":
            result = msgspec.convert(raw, _FunctionCallOutput)
            output: str | list[ContentPart] = (
                result.output if isinstance(result.output, str) else list(result.output)
            )
            return FunctionCallOutputItem(
                id=result.id or new_item_id("fco"), call_id=result.call_id, output=output
            )
        message = msgspec.convert(raw, _Message)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, where) from None
    content = [InputText(message.content)] if isinstance(message.content, str) else message.content
    assistant = message.role == "assistant"
    parts = [_text_for(part, assistant) for part in content]
    return MessageItem(id=message.id or new_item_id("msg"), role=message.role, content=parts)


def _text_for(part: ContentPart, assistant: bool) -> ContentPart:
    """A text part with the tag its role lists it under; other parts as they are."""
    if assistant and isinstance(part, InputText):
        return OutputText(text=part.text)
    if not assistant and isinstance(part, OutputText | Refusal):
        return InputText(part.text if isinstance(part, OutputText) else part.refusal)
    return part


def _invalid(exc: msgspec.ValidationError, where: str) -> InvalidValue:
    """msgspec's message with its path (``$.content[0].text``) rebased onto ``where``."""
    message, found, path = str(exc).partition(" - at `$")
    param = (where + path.rstrip("`")).lstrip(".") if found else where
    if not param:
        return InvalidValue(f"Invalid request: {message}.")
    return InvalidValue(f"Invalid value for '{param}': {message}.", param=param)
