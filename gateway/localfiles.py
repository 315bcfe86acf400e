"""``file://`` image URLs, allowed only under configured directories (off by default).

Policy: the URL's host must be empty or ``localhost``; the path is percent-decoded by httpx,
made real (symlinks resolved) and must lie under one of ``GuardConfig.file_roots`` (also made
real). The file is opened without following a final symlink, must be a regular file, and is
read up to ``max_image_bytes``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import httpx

from gateway.errors import ImageBytesTooLarge, ImageFetchFailed, ImageUrlNotAllowed
from gateway.guardconfig import GuardConfig

__all__ = ("LocalFile", "is_file_url", "parse_file_url", "read_file_url")

_NOT_ALLOWED = "file:// image URLs are not allowed here. Send the image as a base64 data URL."


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


def _under(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def read_file_url(path: str, config: GuardConfig, *, param: str) -> bytes:
    """Blocking: read the file at ``path`` if it lies under a configured root."""
    real = os.path.realpath(path)
    if not any(_under(real, os.path.realpath(root)) for root in config.file_roots):
        raise ImageUrlNotAllowed(_NOT_ALLOWED, param=param)
    missing = ImageFetchFailed(
        "The image file does not exist or is not a readable file.", param=param
    )
    try:
        # O_NONBLOCK: a FIFO planted under a root must not hang a worker thread.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise missing from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise missing
        if info.st_size > config.max_image_bytes:
            raise ImageBytesTooLarge(
                f"The image file is larger than {config.max_image_bytes} bytes, the limit "
                "per image.",
                param=param,
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(config.max_image_bytes + 1)
    except OSError as exc:
        raise missing from exc
    finally:
        os.close(fd)
    if len(data) > config.max_image_bytes:  # grew after fstat
        raise ImageBytesTooLarge(
            f"The image file is larger than {config.max_image_bytes} bytes, the limit per image.",
            param=param,
        )
    return data
