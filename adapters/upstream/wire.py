"""The OpenAI Chat Completions wire format as an upstream client sees it.

``chat_body`` turns a ``GenerationRequest`` into the JSON body of ``POST /chat/completions``
(images as lossless PNG data URLs of the prepared pixels, with vLLM's ``uuid`` when asked;
tools, calls and tool results in OpenAI's shapes); ``sse_payloads`` returns the ``data``
of each event of the streamed answer (parsed by httpx-sse), bounded in size; ``parse_usage``
reads the counts of its usage chunk.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
from httpx_sse import EventSource

from adapters.base import GenerationRequest, ImageInput, Message, ResponseFormat, Tools, Usage
from adapters.upstream.errors import UpstreamUnavailable

__all__ = (
    "MAX_EVENT_BYTES",
    "MAX_UPSTREAM_STOPS",
    "chat_body",
    "parse_usage",
    "png_data_url",
    "sse_payloads",
)

MAX_UPSTREAM_STOPS = 4
"""OpenAI refuses more than 4 stop sequences; any beyond are cut locally only."""
_PNG_COMPRESS_LEVEL = 1  # payload size barely changes with the level; encode time does


# -- request ----------------------------------------------------------------------------------


def png_data_url(image: ImageInput) -> str:
    """The prepared RGB pixels as a lossless PNG data URL (blocking: call off the event loop)."""
    buffer = io.BytesIO()
    image.image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _digest(text: str) -> str:
    """A stable opaque id: the partition name (an API key's id) never leaves in clear."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _message(message: Message, scope: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": _content(message.content, scope)}
    if message.tool_calls:
        if not message.content:
            out["content"] = None  # OpenAI's own shape of a turn that is only calls
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _content(parts: tuple[str | ImageInput, ...], scope: str | None) -> str | list[dict[str, Any]]:
    if not parts:
        return ""  # an assistant turn sent without content: an empty list is not valid content
    if len(parts) == 1 and isinstance(parts[0], str):
        return parts[0]
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, ImageInput):
            # The gateway already applied the pixel budget: "high" keeps the upstream from
            # shrinking the image again.
            url = {"url": png_data_url(part), "detail": "high"}
            item: dict[str, Any] = {"type": "image_url", "image_url": url}
            if scope is not None:
                # vLLM keys its processor and encoder caches by this id instead of hashing the
                # pixels; the digest is ours (pixels + preparation), so equal ids are equal
                # images. The cache partition is in it: a replica shared by every API key must
                # not let one key's request hit another key's cached image (a timing signal).
                item["uuid"] = _digest(f"{scope}|{part.digest}")
            content.append(item)
        else:
            content.append({"type": "text", "text": part})
    return content


def _tools(tools: Tools) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the client sent them."""
    choice: Any = tools.choice
    if tools.choice == "function":
        choice = {"type": "function", "function": {"name": tools.function}}
    return {
        "tools": [spec.as_openai() for spec in tools.specs],
        "tool_choice": choice,
        "parallel_tool_calls": tools.parallel,
    }


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_schema" and fmt.schema is not None:
        schema = {"name": "response", "schema": fmt.schema, "strict": fmt.strict}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": "json_object"}


def chat_body(
    request: GenerationRequest, model: str, image_uuids: bool = False, cache_salt: bool = False
) -> bytes:
    """The JSON body of a streaming ``POST /chat/completions`` for ``request``.

    ``model`` is the operator-configured upstream name, never the client's. Always streams and
    asks for the final usage chunk. ``image_uuids``: each image part carries an id derived from
    its digest and the request's cache partition as ``uuid`` (vLLM 0.11+). ``cache_salt``: the
    partition's digest as ``cache_salt`` (vLLM, vlm-gateway), so the upstream's prefix cache
    keeps API keys apart as ours does. Blocking when the request has images (PNG encoding).
    """
    sampling = request.sampling
    scope = request.cache_scope if image_uuids else None
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m, scope) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    stops = [s for s in sampling.stop if s][:MAX_UPSTREAM_STOPS]
    if stops:
        body["stop"] = stops
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    if request.tools is not None:
        body.update(_tools(request.tools))
    if cache_salt:
        body["cache_salt"] = _digest(request.cache_scope)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_usage(usage: dict[str, Any]) -> Usage | None:
    """The counts of a chunk's ``usage`` object; None when it lacks valid token counts."""

    def count(value: Any) -> int | None:
        return (
            value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
        )

    prompt, completion = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(prompt, completion, min(cached or 0, prompt))


# -- stream -----------------------------------------------------------------------------------

MAX_EVENT_BYTES = 1 << 22
"""Bytes one stream event may take before the stream is refused (a chunk is a few hundred)."""
_LINE_END = re.compile(rb"[\r\n]")


class _BoundedEvents(httpx.AsyncByteStream):
    """The upstream's body as httpx-sse reads it, with two things httpx-sse does not do.

    httpx-sse buffers a line, and the ``data`` lines of an event, without limit: this refuses an
    event (every byte since the last blank line, comments and partial lines included) beyond
    ``max_event_bytes`` with ``UpstreamUnavailable``. And it drops an event the body ends without
    its blank line (as the SSE spec says); this ends such a last event, so it still counts.
    Closing this stream closes the upstream response.
    """

    def __init__(self, response: httpx.Response, max_event_bytes: int) -> None:
        self._response = response
        self.max_event_bytes = max_event_bytes
        self._size = 0  # bytes of the current event
        self._open = False  # the current event has a field or comment (not only line ends)
        self._line_empty = True  # nothing since the last line end
        self._after_cr = False  # the last byte was a "\r" line end: a "\n" next belongs to it

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_bytes():
            self._scan(chunk)
            yield chunk
        if self._open:
            yield b"\n" if self._line_empty and not self._after_cr else b"\n\n"

    async def aclose(self) -> None:
        await self._response.aclose()

    def _scan(self, chunk: bytes) -> None:
        """Follow line ends (``\\r\\n``, ``\\r``, ``\\n``, as SSE has them) to where the current
        event began; refuse it once it is over the bound."""
        pos, event_start = 0, None
        for match in _LINE_END.finditer(chunk):
            i = match.start()
            if i > pos:
                self._line_empty = self._after_cr = False
                self._open = True
            if chunk[i] == 0x0A and self._after_cr:
                self._after_cr = False
            else:
                if self._line_empty:  # a blank line ends the event
                    self._check(i - event_start if event_start is not None else self._size + i)
                    event_start, self._open = i + 1, False
                self._line_empty, self._after_cr = True, chunk[i] == 0x0D
            pos = i + 1
        if pos < len(chunk):
            self._line_empty = self._after_cr = False
            self._open = True
        self._size = self._size + len(chunk) if event_start is None else len(chunk) - event_start
        self._check(self._size)

    def _check(self, size: int) -> None:
        if size > self.max_event_bytes:
            raise UpstreamUnavailable("The upstream sent an oversized stream event.")


async def sse_payloads(
    response: httpx.Response, max_event_bytes: int = MAX_EVENT_BYTES
) -> AsyncGenerator[str, None]:
    """The ``data`` of each event of a ``text/event-stream`` response, decoded by httpx-sse.

    An event without ``data`` (only ``event:``, ``id:`` or ``retry:`` fields, which httpx-sse
    still reports) is skipped. Raises ``UpstreamUnavailable`` for an event beyond
    ``max_event_bytes``, and ``httpx_sse.SSEError`` (an ``httpx.TransportError``) when the
    response is not an event stream. Closing the iterator closes ``response``.
    """
    bounded = httpx.Response(
        response.status_code,
        # Only the content type: the bytes are already decoded (content-encoding applied).
        headers={"content-type": response.headers.get("content-type", "")},
        stream=_BoundedEvents(response, max_event_bytes),
    )
    try:
        async with aclosing(EventSource(bounded).aiter_sse()) as events:
            async for event in events:
                if event.data:
                    yield event.data
    finally:
        await bounded.aclose()
