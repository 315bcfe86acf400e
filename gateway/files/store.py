"""The durable store behind the Files API and stored responses, as one small interface.

Two implementations: ``gateway.files.sqlite_store`` (content-addressed blobs on local disk plus a
SQLite index; the default, one replica) and ``gateway.files.postgres_store`` (metadata and content
in PostgreSQL, so every replica behind a load balancer sees every file and stored response).

Every read and write names the ``owner`` (the caller's tenant, ``Caller.tenant``): a record is
visible only to its owner, and an unknown, foreign or expired id reads as absent (``None`` /
``False``), so a caller cannot tell another key's ids from ids that never existed.
Times are Unix seconds. Expired records are invisible at once and purged by ``purge_expired``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.files.config import FilesConfig

__all__ = (
    "FileRecord",
    "NewFile",
    "QuotaExceeded",
    "Store",
    "StoredResponse",
    "build_store",
    "new_file_id",
    "new_response_id",
)


def new_file_id() -> str:
    """``file-`` and 24 random hex digits (96 bits: not guessable)."""
    return f"file-{secrets.token_hex(12)}"


def new_response_id() -> str:
    return f"resp_{secrets.token_hex(24)}"


@dataclass(frozen=True)
class NewFile:
    """An upload, checked and sniffed, about to be stored."""

    owner: str
    filename: str
    purpose: str
    media_type: str
    """Sniffed from the bytes: ``application/pdf``, ``image/png``, ``image/jpeg`` ..."""
    data: bytes
    created_at: int
    expires_at: int | None


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    media_type: str
    bytes: int
    digest: str
    """SHA-256 hex of the content (the blob's address)."""
    created_at: int
    expires_at: int | None


@dataclass(frozen=True)
class StoredResponse:
    id: str
    owner: str
    body: bytes
    """The stored response and its input, as the Responses API serialised them (opaque here)."""
    created_at: int
    expires_at: int | None


class QuotaExceeded(Exception):
    """Storing the file would take its owner over ``quota_bytes``."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"{used} of {quota} bytes used")
        self.used = used
        self.quota = quota


@runtime_checkable  # Litestar checks injected dependencies with isinstance
class Store(Protocol):
    """Files and stored responses, per owner. Every method is safe to call concurrently."""

    async def open(self) -> None:
        """Create the schema (idempotent) and connect; called once at start-up."""

    async def aclose(self) -> None: ...

    async def add_file(self, file: NewFile, *, quota_bytes: int) -> FileRecord:
        """Store ``file`` under a new id, atomically checking that the owner's live files plus
        this one stay within ``quota_bytes`` (0: no quota); ``QuotaExceeded`` otherwise."""

    async def get_file(self, owner: str, file_id: str, *, now: int) -> FileRecord | None: ...

    async def read_file(self, owner: str, file_id: str, *, now: int) -> bytes | None:
        """The content of a live file of ``owner``."""

    async def list_files(
        self,
        owner: str,
        *,
        now: int,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> list[FileRecord]:
        """Live files of ``owner`` by ``created_at`` (ties by id) in ``order``, starting after
        the file ``after`` (a cursor: an id from a previous page; unknown: from the start)."""

    async def delete_file(self, owner: str, file_id: str) -> bool:
        """Delete a file (its blob too once no file uses it); False when absent or foreign."""

    async def put_response(self, response: StoredResponse) -> None:
        """Insert or replace (same id and owner) a stored response."""

    async def get_response(self, owner: str, response_id: str, *, now: int) -> bytes | None: ...

    async def delete_response(self, owner: str, response_id: str) -> bool: ...

    async def purge_expired(self, now: int) -> int:
        """Delete every file and response whose ``expires_at`` <= ``now``; how many."""


def build_store(config: FilesConfig) -> Store:
    """The store ``config.store`` names, not opened yet. Each implementation is imported only
    when chosen: a single-replica gateway never loads the PostgreSQL driver."""
    if config.store == "postgres":
        from gateway.files.postgres_store import PostgresStore

        return PostgresStore(config.postgres_url)
    from gateway.files.sqlite_store import SqliteStore

    return SqliteStore(config.data_path())
