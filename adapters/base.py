"""The contract between the gateway and a model backend.

The gateway hands an adapter a validated ``GenerationRequest`` (prepared RGB images, never wire
types) and reads back ``StreamEvent`` values. Adapters never import Litestar or ``gateway``; they
report failures with the ``AdapterError`` subclasses below, which the gateway translates.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from PIL import Image

# The contract's errors live in their own module; they are part of this surface.
from adapters.errors import (
    AdapterError,
    BackendRejected,
    BackendUnavailable,
    GenerationCancelled,
    InvalidResponseFormat,
    InvalidTools,
    ModelUnavailable,
    PromptTooLong,
)
from adapters.tools import ToolCall, ToolCallDelta, ToolChoice, Tools, ToolSpec, assemble_calls

__all__ = (
    "Adapter",
    "AdapterError",
    "BackendRejected",
    "BackendUnavailable",
    "Capabilities",
    "Completion",
    "ContentPart",
    "Delta",
    "Finish",
    "FinishReason",
    "GenerationCancelled",
    "GenerationRequest",
    "ImageInput",
    "InvalidResponseFormat",
    "InvalidTools",
    "Message",
    "ModelUnavailable",
    "PromptTooLong",
    "ResponseFormat",
    "Role",
    "SamplingParams",
    "StreamEvent",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolSpec",
    "Tools",
    "Usage",
    "collect",
)

FinishReason = Literal["stop", "length", "tool_calls"]
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, as data the gateway checks (never ``if model_type == ...``)."""

    model_id: str
    """The served model's identifier (hub id or local path name)."""
    revision: str = "main"
    """Checkpoint revision; part of every cache key."""
    context_length: int = 32768
    """Prompt plus completion tokens, at most."""
    max_images: int = 8
    """Images per request, at most."""
    image_factor: int = 32
    """Each image side the model sees is a multiple of this (Qwen3-VL: patch 16 x merge 2)."""
    min_pixels: int = 65536
    """Smallest pixel count the processor accepts (smaller images are upscaled to it)."""
    max_pixels: int = 16777216
    """Largest pixel count the processor accepts (larger images are downscaled to it)."""
    supports_response_format: bool = True
    """Whether ``response_format`` can be enforced during decoding."""
    supports_tools: bool = False
    """Whether ``GenerationRequest.tools`` can be honoured (function calling)."""

    def image_tokens(self, width: int, height: int) -> int:
        """Visual tokens for an image already at a size the model sees."""
        return (width // self.image_factor) * (height // self.image_factor)

    def fit(self, width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
        """The size the model sees for a ``width`` x ``height`` image, as Qwen's ``smart_resize``.

        Sides are rounded to multiples of ``image_factor`` and the area clamped to
        ``[min_pixels, min(max_pixels, self.max_pixels)]`` keeping the aspect ratio.
        Returns ``(width, height)``.
        """
        f = self.image_factor
        ceiling = min(max_pixels or self.max_pixels, self.max_pixels)
        h = max(f, round(height / f) * f)
        w = max(f, round(width / f) * f)
        if h * w > ceiling:
            beta = math.sqrt((height * width) / ceiling)
            h = max(f, math.floor(height / beta / f) * f)
            w = max(f, math.floor(width / beta / f) * f)
        elif h * w < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h = math.ceil(height * beta / f) * f
            w = math.ceil(width * beta / f) * f
        return w, h


@dataclass(frozen=True, eq=False)
class ImageInput:
    """An image ready for the model: RGB, already at the size the model sees."""

    image: Image.Image
    """RGB pixels; both sides multiples of ``Capabilities.image_factor``."""
    digest: str
    """Hex digest of the decoded pixels plus preprocessing parameters (the cache key part)."""

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


ContentPart = str | ImageInput
"""A text segment (user words, never parsed for special tokens) or an image."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant turn's calls (its content is the text before them, possibly empty)."""
    tool_call_id: str | None = None
    """A ``tool`` turn: the call whose result ``content`` is."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    """Completion tokens, at most."""
    temperature: float = 1.0
    """0 means greedy decoding; so does anything below ``GREEDY_BELOW`` (a subnormal temperature
    would turn the logits into infinities)."""
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Stop sequences: output is cut before the first match, which is not returned."""

    GREEDY_BELOW: ClassVar[float] = 1e-5
    """Temperatures below this decode greedily (vLLM's threshold too)."""

    @property
    def greedy(self) -> bool:
        return self.temperature < self.GREEDY_BELOW


@dataclass(frozen=True)
class ResponseFormat:
    """``json_object`` (any JSON object) or ``json_schema`` (with ``schema``)."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[Message, ...]
    sampling: SamplingParams
    response_format: ResponseFormat | None = None
    request_id: str = ""
    cache_scope: str = ""
    """The cache partition this request may read and fill: requests of different scopes never
    share cached work (the gateway sets one per API key, narrowed by the client's cache salt)."""
    owner: str = ""
    """Who asked (the gateway's tenant: an API key id), for a fair share of an engine."""
    tools: Tools | None = None
    """Functions the model may call, and how (None: no tools)."""

    @property
    def images(self) -> tuple[ImageInput, ...]:
        return tuple(p for m in self.messages for p in m.content if isinstance(p, ImageInput))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose work was reused (cached vision features, reused prefix)."""
    image_tokens: int = 0
    """Prompt tokens that are image placeholders."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """A piece of completion text, safe to send (never a prefix of a pending stop string)."""

    text: str


@dataclass(frozen=True)
class Finish:
    """The last event of every stream."""

    finish_reason: FinishReason
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (``vision_encode``, ``prefill``, ``decode``, ``queue``), where known."""


StreamEvent = Delta | ToolCallDelta | Finish


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)
    tool_calls: tuple[ToolCall, ...] = ()


@runtime_checkable
class Adapter(Protocol):
    """A model backend. One instance serves one model, possibly under several names."""

    capabilities: Capabilities

    async def start(self) -> None:
        """Load the model and warm it up; the gateway is ready when this returns."""

    async def check(self, request: GenerationRequest) -> None:
        """Do the request-specific preparation that can refuse it, before it takes a generation
        slot (the local engine compiles its ``response_format`` grammar here, bounded in time);
        raises an ``AdapterError`` such as ``InvalidResponseFormat``. ``stream`` repeats
        nothing this did."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Generate, yielding ``Delta`` (and, with tools, ``ToolCallDelta``) values then
        exactly one ``Finish``.

        Closing the iterator early (client disconnect) cancels the generation within one
        decode step. Raises ``PromptTooLong`` before the first event when the prompt plus
        ``max_tokens`` exceeds the context.
        """
        ...

    async def aclose(self) -> None:
        """Stop workers and release the model."""


async def collect(events: AsyncIterator[StreamEvent]) -> Completion:
    """Drain a stream into one ``Completion`` (the non-streaming path)."""
    parts: list[str] = []
    calls: list[ToolCallDelta] = []
    async for event in events:
        if isinstance(event, Delta):
            parts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.append(event)
        else:
            text, calls_ = "".join(parts), assemble_calls(calls)
            return Completion(text, event.finish_reason, event.usage, event.timings, calls_)
    raise AdapterError("stream ended without a finish event")
