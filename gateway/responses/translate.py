"""A Responses request as a chat completion request: the one pipeline serves both APIs.

``plan`` turns the conversation (a stored chain, then this request's input) into chat messages:
``instructions`` is a leading system message (never stored: OpenAI does not carry it over to a
follow-up), a ``function_call`` item joins the assistant message just before it (a turn that
wrote text then called) or starts one, and a ``function_call_output`` item is a ``tool``
message. Images and files keep their references (``ImageURL.file_id``, ``FilePart``), so the
guard, router, caches and budgets see exactly what a chat request would give them.

Each chat message records its ``Origin`` so the pipeline's errors can name the Responses
request's fields (``gateway.responses.params``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from msgspec import UNSET

from gateway.chat import protocol as wire
from gateway.chat.tool_protocol import (
    FunctionCallWire,
    FunctionWire,
    NamedFunction,
    NamedToolChoice,
    ToolCallWire,
    ToolChoiceWire,
    ToolWire,
)
from gateway.errors import InvalidValue, UnsupportedParameter
from gateway.responses.items import ParamItem, input_items
from gateway.responses.params import Origin
from gateway.responses.protocol import (
    ContentPart,
    CreateResponse,
    FormatJSONObject,
    FormatJSONSchema,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputFile,
    InputImage,
    InputText,
    Item,
    MessageItem,
    OutputText,
    TextConfig,
    ToolChoice,
)

__all__ = ("Plan", "check_supported", "plan")

# Known request fields this server cannot honour, with the values that mean "not used".
_UNSUPPORTED_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "background": (None, False),
    "conversation": (None,),
    "prompt": (None,),
    "top_logprobs": (None, 0),
    "truncation": (None, "disabled"),
    "context_management": (None, []),
    "moderation": (None,),
}
_WHY = {
    "truncation": " This server never truncates the input: an input beyond the model's context "
    "is refused (400 context_length_exceeded); send 'disabled' or leave it out.",
    "background": " Responses are generated while the request waits; use 'stream' instead.",
    "conversation": " Chain responses with 'previous_response_id' instead.",
}
# Satisfied by construction: this server makes no reasoning items, so there is nothing to
# include (clients that keep reasoning statelessly, with store=false, ask for it).
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})


def check_supported(request: CreateResponse) -> None:
    """Refuse (400, naming the parameter) a known field set to a value this server cannot honour."""
    for name, neutral in _UNSUPPORTED_DEFAULTS.items():
        value = getattr(request, name)
        if value is not UNSET and value not in neutral:
            _refuse(name, _WHY.get(name, ""))
    reasoning = request.reasoning
    if reasoning not in (UNSET, None) and not (
        isinstance(reasoning, dict)
        and reasoning.get("effort") in (None, "none")
        and all(v is None for k, v in reasoning.items() if k != "effort")
    ):
        _refuse(
            "reasoning",
            " This server gives no separate reasoning; leave it out or use effort 'none'.",
        )
    include = request.include
    if include not in (UNSET, None) and not (
        isinstance(include, list) and all(isinstance(v, str) and v in _INCLUDABLE for v in include)
    ):
        _refuse("include", " No extra output data (logprobs, hosted tool results) exists here.")
    if request.text is not None and request.text.verbosity not in (None, "medium"):
        _refuse("text.verbosity", "")


def _refuse(param: str, why: str) -> None:
    raise UnsupportedParameter(
        f"The '{param}' parameter is not supported by this server.{why}", param=param
    )


@dataclass(frozen=True)
class Plan:
    chat: wire.ChatCompletionRequest
    items: list[Item]
    """The whole conversation as canonical items (the stored chain, then this input): what a
    stored response keeps as its input."""
    origins: tuple[Origin, ...]
    """Per chat message, where it came from."""


def plan(request: CreateResponse, history: Sequence[Item] = ()) -> Plan:
    """The chat request for ``request`` continuing ``history`` (a stored response's input and
    output items)."""
    pairs: list[ParamItem] = [(item, "previous_response_id") for item in history]
    pairs += input_items(request.input)
    if not pairs:
        raise InvalidValue("'input' is required.", param="input")
    messages, origins = _messages(pairs, request.instructions)
    chat = wire.ChatCompletionRequest(
        model=request.model,
        messages=messages,
        max_completion_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stream=bool(request.stream),
        response_format=_response_format(request.text),
        user=request.user,
        prompt_cache_key=request.prompt_cache_key,
        tools=_tools(request.tools),
        tool_choice=_tool_choice(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls,
    )
    return Plan(chat, [item for item, _ in pairs], tuple(origins))


def _messages(
    pairs: Sequence[ParamItem], instructions: str | None
) -> tuple[list[wire.ChatMessage], list[Origin]]:
    messages: list[wire.ChatMessage] = []
    origins: list[Origin] = []
    if instructions:
        messages.append(wire.ChatMessage(role="system", content=instructions))
        origins.append(Origin("instructions"))
    for item, param in pairs:
        # Inside a stored item or the string form of ``input``, name the whole field.
        nested = param.startswith("input[")
        if isinstance(item, MessageItem):
            parts = [_part(p, f"{param}.content[{j}]") for j, p in enumerate(item.content)]
            messages.append(wire.ChatMessage(role=item.role, content=parts))
            origins.append(Origin(param, "content" if nested else ""))
        elif isinstance(item, FunctionCallItem):
            call = ToolCallWire(
                id=item.call_id, function=FunctionCallWire(item.name, item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                messages.append(wire.ChatMessage(role="assistant", tool_calls=[call]))
                origins.append(Origin(param))
        else:
            content = _output(item, param)
            messages.append(
                wire.ChatMessage(role="tool", content=content, tool_call_id=item.call_id)
            )
            origins.append(Origin(param, "output" if nested else ""))
    return messages, origins


def _output(item: FunctionCallOutputItem, param: str) -> str | list[wire.ContentPart]:
    if isinstance(item.output, str):
        return item.output
    return [_part(p, f"{param}.output[{j}]") for j, p in enumerate(item.output)]


def _part(part: ContentPart, where: str) -> wire.ContentPart:
    if isinstance(part, InputText | OutputText):
        return wire.TextPart(part.text)
    if isinstance(part, InputImage):
        if (part.image_url is None) == (part.file_id is None):
            raise InvalidValue(
                "An 'input_image' needs exactly one of 'image_url' and 'file_id'.", param=where
            )
        # "original" asks for no downscaling: the most detail this server gives is "high".
        detail = "high" if part.detail == "original" else part.detail
        return wire.ImageURLPart(
            wire.ImageURL(url=part.image_url, file_id=part.file_id, detail=detail)
        )
    if isinstance(part, InputFile):
        if part.file_url is not None:
            raise UnsupportedParameter(
                "Files by 'file_url' are not supported by this server; upload the file and "
                "send its 'file_id', or send it inline as 'file_data'.",
                param=f"{where}.file_url",
            )
        if (part.file_id is None) == (part.file_data is None):
            raise InvalidValue(
                "An 'input_file' needs exactly one of 'file_id' and 'file_data'.", param=where
            )
        ref = wire.FileRef(file_id=part.file_id, file_data=part.file_data, filename=part.filename)
        return wire.FilePart(ref)
    return wire.TextPart(part.refusal)  # an earlier refusal is what the assistant said


def _response_format(text: TextConfig | None) -> wire.ResponseFormatWire | None:
    fmt = text.format if text is not None else None
    if isinstance(fmt, FormatJSONObject):
        return wire.ResponseFormatWire("json_object")
    if isinstance(fmt, FormatJSONSchema):
        schema = wire.JSONSchemaWire(fmt.name, fmt.schema, fmt.strict, fmt.description)
        return wire.ResponseFormatWire("json_schema", schema)
    return None


def _tools(tools: list[FunctionTool] | None) -> list[ToolWire] | None:
    if tools is None:
        return None
    out: list[ToolWire] = []
    for i, tool in enumerate(tools):
        if tool.type != "function":
            raise UnsupportedParameter(
                f"Tools of type '{tool.type[:64]}' are not supported by this server (it has "
                "none of OpenAI's hosted tools); only 'function' tools are.",
                param=f"tools[{i}].type",
            )
        if tool.name is None:
            raise InvalidValue("A function tool needs a 'name'.", param=f"tools[{i}].name")
        function = FunctionWire(tool.name, tool.description, tool.parameters, tool.strict)
        out.append(ToolWire(type="function", function=function))
    return out


def _tool_choice(choice: ToolChoice | None) -> ToolChoiceWire | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.type != "function":
        raise UnsupportedParameter(
            f"A 'tool_choice' of type '{choice.type[:64]}' is not supported by this server; use "
            "'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
            param="tool_choice",
        )
    if not choice.name:
        raise InvalidValue("'tool_choice' of type 'function' needs a 'name'.", param="tool_choice")
    return NamedToolChoice(type="function", function=NamedFunction(choice.name))
