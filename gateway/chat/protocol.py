"""Wire types: msgspec Structs whose field names are exactly OpenAI's.

Unknown request fields are ignored (clients send extras). Known fields we cannot honour are
declared here as ``Any`` with an ``UNSET`` default so ``ChatCompletionRequest.unsupported()``
can refuse them by name when a client sets them to a non-default value. The function-calling
types are in ``gateway.chat.tool_protocol``; their meaning is checked in ``gateway.chat.tools``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.chat.tool_protocol import (
    MAX_TOOLS,
    ChunkToolCall,
    ToolCallWire,
    ToolChoiceWire,
    ToolWire,
)
from gateway.errors import InvalidJSON, InvalidValue

__all__ = (
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "ChunkDelta",
    "ContentPart",
    "FilePart",
    "FileRef",
    "ImageURL",
    "ImageURLPart",
    "Model",
    "ModelList",
    "PromptTokensDetails",
    "ResponseFormatWire",
    "ResponseMessage",
    "StreamOptions",
    "TextPart",
    "ToolCallWire",
    "ToolWire",
    "Usage",
    "decode_request",
)


class TextPart(Struct, tag_field="type", tag="text", forbid_unknown_fields=False):
    text: str


class ImageURL(Struct, forbid_unknown_fields=False):
    """An image by URL, or (our extension, named as in the Responses API's ``input_image``) by
    the ``file_id`` of an uploaded image: exactly one of the two."""

    url: Annotated[str, Meta(min_length=1)] | None = None
    file_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    detail: Literal["auto", "low", "high"] = "auto"


class ImageURLPart(Struct, tag_field="type", tag="image_url", forbid_unknown_fields=False):
    image_url: ImageURL


class FileRef(Struct, forbid_unknown_fields=False):
    """OpenAI's ``file`` part: an uploaded file by ``file_id``, or inline ``file_data`` (a
    ``data:`` URL, or bare base64 as some clients send it) with its ``filename``."""

    file_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    file_data: Annotated[str, Meta(min_length=1)] | None = None
    filename: Annotated[str, Meta(max_length=1024)] | None = None


class FilePart(Struct, tag_field="type", tag="file", forbid_unknown_fields=False):
    file: FileRef


ContentPart = TextPart | ImageURLPart | FilePart


class ChatMessage(Struct, forbid_unknown_fields=False):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None
    """An assistant turn's calls."""
    tool_call_id: str | None = None
    """A ``tool`` turn: the id of the call it answers."""
    function_call: Any = UNSET


class StreamOptions(Struct, forbid_unknown_fields=False):
    include_usage: bool = False


class JSONSchemaWire(Struct, forbid_unknown_fields=False):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormatWire(Struct, forbid_unknown_fields=False):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaWire | None = None


# Known OpenAI request fields this server cannot honour, with the value that means "not used".
_UNSUPPORTED_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    # The legacy (pre-tools) function-calling fields: clients use ``tools`` instead.
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}


class ChatCompletionRequest(Struct, forbid_unknown_fields=False):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    # OpenAI documents an int64 seed; torch overflows beyond 64 bits, so bound it here.
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormatWire | None = None
    user: str | None = None
    # Narrow the cache partition (OpenAI's prompt_cache_key, vLLM's cache_salt): requests share
    # cached work only when they come from the same key and name the same value.
    prompt_cache_key: Annotated[str, Meta(max_length=1024)] | None = None
    cache_salt: Annotated[str, Meta(max_length=1024)] | None = None
    # Accepted and ignored: they do not change what is generated.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    # Function calling (checked against each other and the backend in gateway.chat.tools).
    tools: Annotated[list[ToolWire], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceWire | None = None
    parallel_tool_calls: bool | None = None
    # Known but unsupported (see ``unsupported``).
    logprobs: Any = UNSET
    top_logprobs: Any = UNSET
    logit_bias: Any = UNSET
    presence_penalty: Any = UNSET
    frequency_penalty: Any = UNSET
    functions: Any = UNSET
    function_call: Any = UNSET
    audio: Any = UNSET
    modalities: Any = UNSET
    prediction: Any = UNSET
    web_search_options: Any = UNSET

    def unsupported(self) -> str | None:
        """The first known field set to a value this server cannot honour, if any."""
        if self.n not in (None, 1):
            return "n"
        for name, neutral in _UNSUPPORTED_DEFAULTS.items():
            value = getattr(self, name)
            if value is not UNSET and value not in neutral:
                return name
        return None


# -- responses ------------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int = 0


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)


class ResponseMessage(Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallWire] | UnsetType = UNSET
    """Present only when the model called functions (OpenAI omits it otherwise)."""


class Choice(Struct, kw_only=True):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: str | None


class ChatCompletion(Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    warnings: list[str] | UnsetType = UNSET
    """Gateway extension: fidelity and routing warning codes (also in ``x-gateway-warnings``)."""


class ChunkDelta(Struct):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[ChunkToolCall] | UnsetType = UNSET


class ChunkChoice(Struct):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    # OpenAI sends "usage": null on every chunk when include_usage is set, and omits it otherwise.
    usage: Usage | UnsetType | None = UNSET


class Model(Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


_decoder = msgspec.json.Decoder(ChatCompletionRequest)


def decode_request(body: bytes) -> ChatCompletionRequest:
    """Parse a request body; every failure is a 400 naming the offending field."""
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, found, path = str(exc).partition(" - at `$")
        param = path.rstrip("`").lstrip(".") if found else ""
        if not param:
            raise InvalidValue(f"Invalid request: {message}.") from None
        raise InvalidValue(f"Invalid value for '{param}': {message}.", param=param) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON(
            "The request body is not valid JSON (it must be UTF-8 encoded and nested at most "
            "a few hundred levels deep)."
        ) from None
    if request.stream_options is not None and not request.stream:
        # OpenAI and vLLM refuse it too: the options describe a stream that will not happen.
        raise InvalidValue(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )
    return request
