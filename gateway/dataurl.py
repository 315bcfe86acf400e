"""Strict ``data:`` URL parsing (RFC 2397) for image parts.

Policy, stricter than the RFC where the RFC invites ambiguity:

* the form is ``data:[<type>/<subtype>[;<attribute>=<value>]*];base64,<payload>``; the scheme and
  ``base64`` are case-insensitive, the media type is lower-cased;
* ``;base64`` is required: percent-encoded image bytes are refused (no client sends them and
  they would need a second decoder);
* the payload is standard base64 (``A-Z a-z 0-9 + /``), padded to a multiple of 4, with no
  whitespace, line breaks, percent escapes or URL-safe alphabet;
* an omitted media type means "unspecified" (the bytes are sniffed), not the RFC's default
  ``text/plain``;
* the decoded size is computed from the payload length and checked against the byte cap
  BEFORE anything is decoded or allocated.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from gateway.errors import ImageBytesTooLarge, InvalidImage

__all__ = ("DataURL", "decode_data_url", "is_data_url", "parse_data_url")

# RFC 2045 token characters; a media type is token/token, a parameter token=token.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIATYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_PARAMETER = re.compile(rf"{_TOKEN}={_TOKEN}")
_MAX_HEADER = 256
"""Characters between ``data:`` and the comma; real headers are a few dozen."""

_HOW = "Send the image as data:image/png;base64,<standard base64> (or image/jpeg, image/webp)."


@dataclass(frozen=True)
class DataURL:
    """A data URL whose header is valid and whose payload length is within the byte cap."""

    mediatype: str | None
    """Declared ``type/subtype``, lower-cased; None when omitted."""
    payload: str
    """The base64 text, not yet validated character by character."""
    decoded_length: int
    """Bytes the payload decodes to (exact when the payload is valid base64)."""


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def parse_data_url(url: str, *, max_bytes: int, param: str) -> DataURL:
    """Check the header and the payload length; decode nothing. No I/O, O(header) time.

    Raises ``InvalidImage`` for a malformed URL and ``ImageBytesTooLarge`` (413) when the
    payload would decode to more than ``max_bytes`` bytes.
    """
    if not is_data_url(url):
        raise InvalidImage("The image URL is not a data URL. " + _HOW, param=param)
    comma = url.find(",", 5, 5 + _MAX_HEADER + 1)
    if comma < 0:
        raise InvalidImage("The image data URL has no valid header. " + _HOW, param=param)
    parts = url[5:comma].split(";")
    if len(parts) < 2 or parts[-1].lower() != "base64":
        raise InvalidImage("The image data URL must be base64 encoded. " + _HOW, param=param)
    mediatype = parts[0].lower() or None
    if mediatype is not None and not _MEDIATYPE.fullmatch(mediatype):
        raise InvalidImage("The image data URL has an invalid media type. " + _HOW, param=param)
    if not all(_PARAMETER.fullmatch(p) for p in parts[1:-1]):
        raise InvalidImage("The image data URL has an invalid parameter. " + _HOW, param=param)
    payload = url[comma + 1 :]
    n = len(payload)
    if n == 0:
        raise InvalidImage("The image data URL is empty. " + _HOW, param=param)
    if n % 4:
        raise InvalidImage(
            "The image data URL's base64 payload is not padded to a multiple of 4 characters. "
            + _HOW,
            param=param,
        )
    decoded = n // 4 * 3 - (2 if payload.endswith("==") else 1 if payload.endswith("=") else 0)
    if decoded > max_bytes:
        raise ImageBytesTooLarge(
            f"The image is {decoded} bytes; the limit is {max_bytes} bytes per image. "
            "Send a smaller or more compressed image.",
            param=param,
        )
    return DataURL(mediatype, payload, decoded)


def decode_data_url(data_url: DataURL, *, param: str) -> bytes:
    """Decode the payload strictly (standard alphabet, no whitespace). Linear time; may be run
    in a worker thread for large payloads."""
    try:
        data = base64.b64decode(data_url.payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(
            "The image data URL's payload is not valid base64. " + _HOW, param=param
        ) from exc
    if len(data) != data_url.decoded_length:  # '=' inside the payload slipped past the count
        raise InvalidImage("The image data URL's payload is not valid base64. " + _HOW, param=param)
    return data
