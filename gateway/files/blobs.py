"""The SQLite store's content on local disk: content-addressed blobs in a directory.

``<sha256[:2]>/<sha256>`` under the directory holds each distinct content once (mode 0600, in
directories of mode 0700). Writing takes two steps, so that the slow part (writing and syncing
the bytes) happens before the store takes its index's write lock: ``stage`` writes a temporary
file next to the blob's place, and ``place`` renames it there, which is atomic on the same file
system. The store calls ``place`` and ``remove`` only while it holds that write lock (see
``gateway.files.sqlite_store``); reads need no lock.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

__all__ = ("BlobDirectory",)

_STALE_TEMP_S = 3600
"""A blob's temporary file this old was left by a crashed upload (an upload takes seconds)."""


class BlobDirectory:
    """The blobs under ``root`` (created with mode 0700 by ``create``). Blocking: call it from
    worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def stage(self, digest: str, data: bytes) -> Path:
        """``data`` in a temporary file beside the blob's place, synced to disk; the caller
        unlinks it once done (``place`` renamed it, or it was not needed)."""
        parent = self.path(digest).parent
        parent.mkdir(mode=0o700, exist_ok=True)
        return _write_temp(parent, data)

    def place(self, temp: Path, digest: str) -> None:
        """Rename ``temp`` (from ``stage``) into place, unless the content is already stored."""
        blob = self.path(digest)
        if not blob.exists():
            os.replace(temp, blob)
            _fsync_dir(blob.parent)  # the rename is durable before the row is

    def read(self, digest: str) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:  # the file was deleted since the query: it is absent now
            return None

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def sweep_temps(self) -> None:
        """Remove temporary files of uploads that crashed before their rename; judged by the
        clock, so that an upload in progress in another process is never touched."""
        stale = time.time() - _STALE_TEMP_S
        for temp in self.root.glob("*/.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < stale:
                    temp.unlink()


def _write_temp(directory: Path, data: bytes) -> Path:
    """``data`` in a new file (mode 0600) of ``directory``, synced to disk: ready to be renamed
    over its final name, which is atomic on the same file system."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
