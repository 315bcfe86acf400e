"""The pipe protocol between ``gateway.files.pdf`` (the server) and a PDF child process.

Both sides import this module, so it imports the standard library only (the child must stay
light: see ``gateway.files.pdf_child``).

The protocol treats the child as untrusted (it parses hostile input with C code): JSON frames
with a length prefix (never pickle, which would execute code in the server), lengths checked
against limits, and pixels read as exactly the bytes the parent asked for (raw RGB,
``width * height * 3`` per page, no PNG round trip).

On stdin the child reads one request frame (the job and its limits) followed by the PDF's
``size`` bytes; on stdout it answers an inspect with one frame, a render with one ``{"ok": true}``
frame followed by the pixels per page, and a refusal with an ``{"error": ...}`` frame.
"""

from __future__ import annotations

import json
import math
import struct
from typing import IO, Any

__all__ = ("HEADER", "MAX_FRAME", "Broken", "check_info", "read_exact", "read_frame")

HEADER = struct.Struct(">Q")
"""Each frame's length prefix."""
MAX_FRAME = 1 << 20
"""Largest JSON frame but an inspect reply (bounded by the child's address space instead)."""


class Broken(Exception):
    """The child's output ended early or broke the protocol: it crashed or was killed."""


def read_exact(stream: IO[bytes], size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise Broken
        done += got
    return buffer


def read_frame(stream: IO[bytes], limit: int) -> dict[str, Any]:
    (size,) = HEADER.unpack(read_exact(stream, HEADER.size))
    if size > limit:
        raise Broken
    value = json.loads(read_exact(stream, size).decode("utf-8"))
    if not isinstance(value, dict):
        raise Broken
    return value


def check_info(
    reply: dict[str, Any], *, max_pages: int, with_text: bool
) -> tuple[tuple[tuple[float, float], ...], tuple[str, ...] | None]:
    """The child's inspect reply, checked as untrusted input (in the exchange thread: any
    ``ValueError`` here is a broken child): the page sizes, and the text when asked for."""
    pages = reply.get("pages")
    text = reply.get("text")
    if not isinstance(pages, list) or not 1 <= len(pages) <= max_pages:
        raise Broken
    sizes = []
    for size in pages:
        if not (isinstance(size, list) and len(size) == 2):
            raise Broken
        width, height = (float(v) if type(v) in (int, float) else math.nan for v in size)
        if not (0 < width < math.inf and 0 < height < math.inf):
            raise Broken
        sizes.append((width, height))
    if not with_text:
        return tuple(sizes), None
    if not (isinstance(text, list) and len(text) == len(pages)):
        raise Broken
    if not all(isinstance(t, str) for t in text):
        raise Broken
    for t in text:
        t.encode("utf-8")  # a lone surrogate (from a \ud800 escape) would fail later instead
    return tuple(sizes), tuple(text)
