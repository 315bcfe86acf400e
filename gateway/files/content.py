"""What a file is, judged from its bytes: the only types accepted are images and PDFs.

Uploads and inline ``file_data`` are sniffed, never trusted by their declared type or name: a
file is an image when the guard's sniffer names an accepted image format, a PDF when ``%PDF-``
starts it (PDF readers accept it within the first 1024 bytes; so do we).
"""

from __future__ import annotations

import base64
import binascii
import re

from gateway.errors import FileTooLarge, GatewayError, InvalidFile
from gateway.guard.formats import sniff

__all__ = ("PDF", "decode_file_data", "is_image", "sniff_file")

PDF = "application/pdf"
_ACCEPTED = "Only images (PNG, JPEG, WebP, GIF, BMP) and PDF documents are accepted."
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.I)


def sniff_file(data: bytes, *, param: str) -> str:
    """The media type of ``data`` (``application/pdf`` or ``image/<format>``), or 400."""
    if not data:
        raise InvalidFile("The file is empty.", param=param)
    if b"%PDF-" in data[:1024]:
        return PDF
    try:
        return f"image/{sniff(data, param=param).lower()}"
    except GatewayError:
        raise InvalidFile(
            f"The file is neither an image nor a PDF. {_ACCEPTED}", param=param
        ) from None


def is_image(media_type: str) -> bool:
    return media_type.startswith("image/")


def decode_file_data(text: str, *, max_bytes: int, param: str) -> bytes:
    """Inline ``file_data``: a base64 data URL (any media type: the bytes are sniffed) or bare
    base64, as clients send both; the size is checked before anything is decoded."""
    match = _DATA_URL.match(text)
    payload = text[match.end() :] if match else text
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise FileTooLarge(
            f"The file is larger than {max_bytes} bytes (files.max_file_bytes).", param=param
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidFile(
            "'file_data' must be base64, optionally as a data URL: "
            "data:application/pdf;base64,<standard base64>.",
            param=param,
        ) from None
