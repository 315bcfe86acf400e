"""Image sources: what an image URL names, checked with no I/O, and how its bytes are read.

``parse_source`` classifies a URL: a data URL (parsed, not decoded), a remote ``http(s)`` URL
(checked, not resolved: fetching is ``gateway.guard.fetch``'s), or a file under a configured root.

Data URLs. Policy, stricter than the RFC where the RFC invites ambiguity:

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

Files. Policy: the URL's host must be empty or ``localhost``; the path is percent-decoded by httpx,
must have no ``..`` segment and must lie under one of ``GuardConfig.file_roots`` (a root may
itself be a link). It is opened one component at a time below the root's directory descriptor
without following any link (race-free: swapping a directory for a link mid-read cannot escape),
must be a regular file, and is read up to ``max_image_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from dataclasses import dataclass

import httpx

from gateway.errors import ImageBytesTooLarge, ImageFetchFailed, ImageUrlNotAllowed, InvalidImage
from gateway.guard.config import GuardConfig
from gateway.guard.fetch import parse_remote_url

__all__ = (
    "DataURL",
    "LocalFile",
    "Source",
    "decode_data_url",
    "is_data_url",
    "is_file_url",
    "parse_data_url",
    "parse_file_url",
    "parse_source",
    "read_file_url",
)

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


# Every refusal gets this one message: it names the setting, never the roots or the failed check.
_NOT_ALLOWED = (
    "file:// image URLs are allowed only for files under the directories an operator lists in "
    "guard.file_roots (none by default). Send the image as a base64 data URL."
)


@dataclass(frozen=True)
class LocalFile:
    """A ``file://`` URL that passed the structural check; not yet opened."""

    path: str
    """Absolute path as named by the URL (percent-decoded, symlinks not yet resolved)."""

    def read(self, config: GuardConfig, *, param: str) -> bytes:
        """Blocking: see ``read_file_url``."""
        return read_file_url(self.path, config, param=param)


def is_file_url(url: str) -> bool:
    return url[:5].lower() == "file:"


def parse_file_url(url: str, config: GuardConfig, *, param: str) -> str:
    """Structural check, no I/O: returns the absolute path named by the URL."""
    if not config.file_roots or len(url) > config.max_url_length:
        raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param)
    if "\\" in url or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param) from exc
    path = parsed.path
    if parsed.raw_host not in (b"", b"localhost") or not path.startswith("/") or "\0" in path:
        raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param)
    return path


def read_file_url(path: str, config: GuardConfig, *, param: str) -> bytes:
    """Blocking: read the file at ``path`` if it lies under a configured root.

    Race-free against a directory swapped for a symlink while we read: the path is judged
    lexically (no ``..``), then opened one component at a time relative to the root's directory
    descriptor with ``O_NOFOLLOW``, so no link anywhere below the root is ever followed (a link
    planted under a root is refused even if it points inside it).
    """
    parts = _parts_under_roots(path, config)
    if parts is None:
        raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param)
    root, names = parts
    missing = ImageFetchFailed(
        "The image file does not exist or is not a readable file.", param=param
    )
    try:
        fd = _open_beneath(root, names)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link below the root: refused, wherever it points
            raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param) from exc
        raise missing from exc
    except ValueError as exc:
        raise missing from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise missing
        if info.st_size > config.max_image_bytes:
            raise _too_large(config, param)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(config.max_image_bytes + 1)
    except OSError as exc:
        raise missing from exc
    finally:
        os.close(fd)
    if len(data) > config.max_image_bytes:  # grew after fstat
        raise _too_large(config, param)
    return data


def _parts_under_roots(path: str, config: GuardConfig) -> tuple[str, list[str]] | None:
    """The root ``path`` lies under and the names below it, judged on the text alone."""
    names = [n for n in path.split("/") if n not in ("", ".")]
    if ".." in names or not names:
        return None
    for configured in config.file_roots:
        # A root itself may be a link (resolved once, here); nothing below it may be.
        for root in dict.fromkeys((os.path.abspath(configured), os.path.realpath(configured))):
            root_names = [n for n in root.split("/") if n]
            if names[: len(root_names)] == root_names and len(names) > len(root_names):
                return root, names[len(root_names) :]
    return None


def _open_beneath(root: str, names: list[str]) -> int:
    """Open ``root/names...`` for reading without following any link below ``root``."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names[:-1]:
            below = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
            os.close(directory)
            directory = below
        # O_NONBLOCK: a FIFO planted under a root must not hang a worker thread.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        return os.open(names[-1], flags, dir_fd=directory)
    finally:
        os.close(directory)


def _too_large(config: GuardConfig, param: str) -> ImageBytesTooLarge:
    return ImageBytesTooLarge(
        f"The image file is larger than {config.max_image_bytes} bytes, the limit per image.",
        param=param,
    )


Source = DataURL | httpx.URL | LocalFile
"""A checked data URL (not decoded), a checked remote URL (not resolved), or a local file."""


def parse_source(url: str, config: GuardConfig, *, param: str) -> Source:
    """Data URLs always; ``http(s)`` when ``remote_fetch``; ``file`` under ``file_roots``."""
    if not isinstance(url, str) or not url:
        raise InvalidImage("The image URL is empty. Send a base64 data URL.", param=param)
    if is_data_url(url):
        return parse_data_url(url, max_bytes=config.max_image_bytes, param=param)
    if is_file_url(url):
        return LocalFile(parse_file_url(url, config, param=param))
    if url[:8].lower().startswith(("http://", "https://")):
        if not config.remote_fetch:
            raise ImageUrlNotAllowed(
                "Remote image URLs are disabled on this server. Send the image as a base64 "
                "data URL (data:image/png;base64,...).",
                param=param,
            )
        return parse_remote_url(url, config, param=param)
    raise ImageUrlNotAllowed(
        "Image URLs must be base64 data URLs (data:image/png;base64,...) or http(s) URLs.",
        param=param,
    )
