"""The OpenAI Chat Completions wire format as an upstream client sees it.

``chat_body`` turns a ``GenerationRequest`` into the JSON body of ``POST /chat/completions``
(images as lossless PNG data URLs of the prepared pixels); ``SSEDecoder`` returns the ``data:``
payloads of a ``text/event-stream``, bounded in size.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

from adapters.base import GenerationRequest, ImageInput, Message, ResponseFormat
from adapters.upstreamerrors import UpstreamUnavailable

__all__ = ("MAX_UPSTREAM_STOPS", "SSEDecoder", "chat_body", "png_data_url")

MAX_UPSTREAM_STOPS = 4
"""OpenAI refuses more than 4 stop sequences; any beyond are cut locally only."""
_PNG_COMPRESS_LEVEL = 1  # payload size barely changes with the level; encode time does


# -- request ----------------------------------------------------------------------------------


def png_data_url(image: ImageInput) -> str:
    """The prepared RGB pixels as a lossless PNG data URL (blocking: call off the event loop)."""
    buffer = io.BytesIO()
    image.image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _message(message: Message) -> dict[str, Any]:
    parts = message.content
    if len(parts) == 1 and isinstance(parts[0], str):
        return {"role": message.role, "content": parts[0]}
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, ImageInput):
            # The gateway already applied the pixel budget: "high" keeps the upstream from
            # shrinking the image again.
            url = {"url": png_data_url(part), "detail": "high"}
            content.append({"type": "image_url", "image_url": url})
        else:
            content.append({"type": "text", "text": part})
    return {"role": message.role, "content": content}


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_schema" and fmt.schema is not None:
        schema = {"name": "response", "schema": fmt.schema, "strict": fmt.strict}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": "json_object"}


def chat_body(request: GenerationRequest, model: str) -> bytes:
    """The JSON body of a streaming ``POST /chat/completions`` for ``request``.

    ``model`` is the operator-configured upstream name, never the client's. Always streams and
    asks for the final usage chunk. Blocking when the request has images (PNG encoding).
    """
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in request.messages],
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
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- stream -----------------------------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Incremental ``text/event-stream`` parser that returns each event's ``data`` field.

    Lines end in ``\\r\\n``, ``\\n`` or ``\\r`` (never other Unicode line breaks, which JSON may
    carry raw); several ``data:`` lines of one event are joined with ``\\n``; comments and other
    fields are ignored. An event or line beyond ``max_event_chars`` raises
    ``UpstreamUnavailable`` rather than growing without bound.
    """

    def __init__(self, max_event_chars: int = 1 << 22) -> None:
        self.max_event_chars = max_event_chars
        self._buffer = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, text: str) -> list[str]:
        """Add received text; return the ``data`` of every event it completed."""
        buffer = self._buffer + text
        events: list[str] = []
        pos = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer):
                break  # may be the first half of a "\r\n" split across reads
            self._line(buffer[pos : match.start()], events)
            pos = match.end()
        self._buffer = buffer[pos:]
        if len(self._buffer) + self._size > self.max_event_chars:
            raise UpstreamUnavailable("The upstream sent an oversized stream event.")
        return events

    def close(self) -> list[str]:
        """At end of stream: the last event, if the upstream did not end it with a blank line."""
        events: list[str] = []
        if self._buffer:
            self._line(self._buffer.rstrip("\r"), events)
            self._buffer = ""
        self._line("", events)
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
            self._data, self._size = [], 0
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            value = value.removeprefix(" ")
            self._data.append(value)
            self._size += len(value) + 1
