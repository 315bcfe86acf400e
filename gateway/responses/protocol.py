"""Wire types of the Responses API: msgspec Structs whose field names are exactly OpenAI's.

The request is decoded leniently (unknown fields are ignored, as chat does) and its ``input``
items are kept as raw objects here: ``gateway.responses.items`` converts each one by its ``type``
so a refusal can name the item (``input[3].content[1]``) and say what is unsupported about it.

Items have one canonical shape (``Item``): what a response's ``output`` holds, what ``GET
.../input_items`` lists and what is stored, so a stored conversation is replayed by the same code
that reads a request's input. Content parts keep OpenAI's tags (``input_text``, ``input_image``,
``input_file``, ``output_text``, ``refusal``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct

from gateway.chat.tool_protocol import MAX_TOOLS

__all__ = (
    "ContentPart",
    "CreateResponse",
    "DeletedResponse",
    "FormatJSONObject",
    "FormatJSONSchema",
    "FormatText",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "IncompleteDetails",
    "InputFile",
    "InputImage",
    "InputText",
    "Item",
    "ItemList",
    "ItemStatus",
    "MessageItem",
    "OutputText",
    "Reasoning",
    "Refusal",
    "ResponseError",
    "ResponseObject",
    "ResponseUsage",
    "TextConfig",
    "ToolChoiceFunction",
)

FunctionName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
"""OpenAI's rule for function names (the same as chat's)."""

MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]

ItemStatus = Literal["in_progress", "completed", "incomplete"]

# -- content parts ---------------------------------------------------------------------------


class InputText(Struct, tag_field="type", tag="input_text", forbid_unknown_fields=False):
    text: str


class InputImage(Struct, tag_field="type", tag="input_image", forbid_unknown_fields=False):
    """An image by URL (``data:`` or ``http(s)``) or by the ``file_id`` of an upload."""

    image_url: Annotated[str, Meta(min_length=1)] | None = None
    file_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    detail: Literal["auto", "low", "high", "original"] = "auto"


class InputFile(Struct, tag_field="type", tag="input_file", forbid_unknown_fields=False):
    """A file (a PDF) by ``file_id``, or inline as ``file_data`` with its ``filename``."""

    file_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    file_data: Annotated[str, Meta(min_length=1)] | None = None
    filename: Annotated[str, Meta(max_length=1024)] | None = None
    file_url: str | None = None
    """Refused: the server fetches images by URL, never documents."""


class OutputText(
    Struct, tag_field="type", tag="output_text", kw_only=True, forbid_unknown_fields=False
):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class Refusal(Struct, tag_field="type", tag="refusal", forbid_unknown_fields=False):
    refusal: str


ContentPart = InputText | InputImage | InputFile | OutputText | Refusal

# -- items (canonical: output, stored input, input_items) -------------------------------------


class MessageItem(Struct, tag_field="type", tag="message", kw_only=True):
    id: str
    status: ItemStatus = "completed"
    role: Literal["user", "system", "developer", "assistant"]
    content: list[ContentPart]


class FunctionCallItem(Struct, tag_field="type", tag="function_call", kw_only=True):
    id: str
    status: ItemStatus = "completed"
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(Struct, tag_field="type", tag="function_call_output", kw_only=True):
    id: str
    status: ItemStatus = "completed"
    call_id: str
    output: str | list[ContentPart]


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem

# -- request ---------------------------------------------------------------------------------


class FormatText(Struct, tag_field="type", tag="text", forbid_unknown_fields=False):
    pass


class FormatJSONObject(Struct, tag_field="type", tag="json_object", forbid_unknown_fields=False):
    pass


class FormatJSONSchema(
    Struct, tag_field="type", tag="json_schema", kw_only=True, forbid_unknown_fields=False
):
    """Flat, unlike chat's ``response_format.json_schema`` object."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class TextConfig(Struct, forbid_unknown_fields=False):
    format: FormatText | FormatJSONObject | FormatJSONSchema = msgspec.field(
        default_factory=FormatText
    )
    verbosity: Literal["low", "medium", "high"] | None = "medium"


class FunctionTool(Struct, kw_only=True, forbid_unknown_fields=False):
    """A tool as the request sends it; only ``type: "function"`` is served (the others are
    OpenAI's hosted tools), so ``name`` is optional here and required in translation."""

    type: str
    name: FunctionName | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(Struct, forbid_unknown_fields=False):
    """``{"type": "function", "name": ...}``; other types are hosted or custom tools."""

    type: str
    name: str | None = None


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


class Reasoning(Struct, forbid_unknown_fields=False):
    effort: str | None = None
    summary: str | None = None


class CreateResponse(Struct, kw_only=True, forbid_unknown_fields=False):
    """``POST /v1/responses``. Fields after the marker are known but unsupported when set to
    anything but their neutral value (``gateway.responses.translate.unsupported``)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    text: TextConfig | None = None
    tools: Annotated[list[FunctionTool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    previous_response_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    stream: bool | None = None
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)] | None = None
    prompt_cache_key: Annotated[str, Meta(max_length=1024)] | None = None
    # Accepted and ignored: they do not change what is generated.
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    stream_options: Any = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    """Limits OpenAI's hosted tools only, of which this server has none."""
    # Known but unsupported.
    reasoning: Any = UNSET
    include: Any = UNSET
    background: Any = UNSET
    conversation: Any = UNSET
    prompt: Any = UNSET
    top_logprobs: Any = UNSET
    truncation: Any = UNSET
    context_management: Any = UNSET
    moderation: Any = UNSET


# -- response --------------------------------------------------------------------------------


class InputTokensDetails(Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(Struct):
    code: str
    message: str


class IncompleteDetails(Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    background: bool = False
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[Item] = msgspec.field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    reasoning: Reasoning = msgspec.field(default_factory=Reasoning)
    safety_identifier: str | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float | None = None
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    tool_choice: ToolChoice = "auto"
    tools: list[FunctionTool] = msgspec.field(default_factory=list)
    top_logprobs: int = 0
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class ItemList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
