"""The default file store: content-addressed blobs on local disk and a SQLite index.

Layout under ``root``: ``blobs/<sha256[:2]>/<sha256>`` holds each distinct content once
(``gateway.files.blobs``), and ``index.sqlite3`` (WAL mode) the ``files`` and ``responses``
tables (``gateway.files.sqlite_index``). Several gateway processes may share the directory:
SQLite's file locking serialises the writers, and every change to the set of blobs (a rename
into place, an unlink) happens inside a ``BEGIN IMMEDIATE`` transaction, that is while holding
the database's write lock, so a blob is never removed between another writer's "it is there"
and its commit. Reads need no lock: a row's blob outlives the row.

``sqlite3`` blocks, so every call runs in a worker thread on a connection of its own (opening one
costs microseconds, and per-call connections cannot be shared across threads by mistake).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from gateway.files.blobs import BlobDirectory
from gateway.files.sqlite_index import SqliteIndex
from gateway.files.store import FileRecord, NewFile, QuotaExceeded, StoredResponse, new_file_id

__all__ = ("SqliteStore",)

_FILE_COLUMNS = "id, owner, filename, purpose, media_type, bytes, digest, created_at, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class SqliteStore:
    """Files and stored responses under ``root`` (created with mode 0700 on ``open``)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._blobs = BlobDirectory(self._root / "blobs")
        self._index = SqliteIndex(self._root / "index.sqlite3")

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    async def aclose(self) -> None:
        await self._index.aclose()

    async def add_file(self, file: NewFile, *, quota_bytes: int) -> FileRecord:
        return await asyncio.to_thread(self._add_file, file, quota_bytes)

    async def get_file(self, owner: str, file_id: str, *, now: int) -> FileRecord | None:
        return await asyncio.to_thread(self._get_file, owner, file_id, now)

    async def read_file(self, owner: str, file_id: str, *, now: int) -> bytes | None:
        return await asyncio.to_thread(self._read_file, owner, file_id, now)

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
        """See ``Store.list_files``; a cursor that has expired but is not yet purged still
        marks its place, so a page boundary expiring does not restart the listing."""
        return await asyncio.to_thread(self._list_files, owner, now, purpose, limit, after, order)

    async def delete_file(self, owner: str, file_id: str) -> bool:
        return await asyncio.to_thread(self._delete_file, owner, file_id)

    async def put_response(self, response: StoredResponse) -> None:
        await asyncio.to_thread(self._put_response, response)

    async def get_response(self, owner: str, response_id: str, *, now: int) -> bytes | None:
        return await asyncio.to_thread(self._get_response, owner, response_id, now)

    async def delete_response(self, owner: str, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete_response, owner, response_id)

    async def purge_expired(self, now: int) -> int:
        return await asyncio.to_thread(self._purge_expired, now)

    # The blocking halves, run in worker threads.

    def _open(self) -> None:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._blobs.create()
        self._index.create()

    def _add_file(self, file: NewFile, quota_bytes: int) -> FileRecord:
        record = FileRecord(
            id=new_file_id(),
            owner=file.owner,
            filename=file.filename,
            purpose=file.purpose,
            media_type=file.media_type,
            bytes=len(file.data),
            digest=hashlib.sha256(file.data).hexdigest(),
            created_at=file.created_at,
            expires_at=file.expires_at,
        )
        # The slow part (writing and syncing the bytes) happens before taking the write lock;
        # under it only a rename, or nothing when the content is already stored.
        temp = self._blobs.stage(record.digest, file.data)
        try:
            with self._index.write() as conn:
                if quota_bytes:
                    (used,) = conn.execute(
                        f"SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ? AND {_LIVE}",
                        (file.owner, file.created_at),
                    ).fetchone()
                    if used + record.bytes > quota_bytes:
                        raise QuotaExceeded(used, quota_bytes)
                conn.execute(
                    f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _file_row(record),
                )
                self._blobs.place(temp, record.digest)
        finally:
            temp.unlink(missing_ok=True)  # not renamed: a duplicate, over quota, or failed
        return record

    def _get_file(self, owner: str, file_id: str, now: int) -> FileRecord | None:
        with contextlib.closing(self._index.connect()) as conn:
            row = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ? AND owner = ? AND {_LIVE}",
                (file_id, owner, now),
            ).fetchone()
        return None if row is None else FileRecord(*row)

    def _read_file(self, owner: str, file_id: str, now: int) -> bytes | None:
        record = self._get_file(owner, file_id, now)
        if record is None:
            return None
        return self._blobs.read(record.digest)  # None if deleted since the query

    def _list_files(
        self,
        owner: str,
        now: int,
        purpose: str | None,
        limit: int,
        after: str | None,
        order: Literal["asc", "desc"],
    ) -> list[FileRecord]:
        where = [f"owner = ? AND {_LIVE}"]
        params: list[object] = [owner, now]
        if purpose is not None:
            where.append("purpose = ?")
            params.append(purpose)
        direction, beyond = ("ASC", ">") if order == "asc" else ("DESC", "<")
        with contextlib.closing(self._index.connect()) as conn:
            if after is not None:
                cursor = conn.execute(
                    "SELECT created_at, id FROM files WHERE owner = ? AND id = ?", (owner, after)
                ).fetchone()
                if cursor is not None:
                    where.append(f"(created_at, id) {beyond} (?, ?)")
                    params.extend(cursor)
            rows = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(where)} "
                f"ORDER BY created_at {direction}, id {direction} LIMIT ?",
                (*params, max(limit, 0)),  # SQLite reads a negative LIMIT as "no limit"
            ).fetchall()
        return [FileRecord(*row) for row in rows]

    def _delete_file(self, owner: str, file_id: str) -> bool:
        with self._index.write() as conn:
            row = conn.execute(
                "SELECT digest FROM files WHERE id = ? AND owner = ?", (file_id, owner)
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
            self._drop_orphans(conn, [row[0]])
        return True

    def _drop_orphans(self, conn: sqlite3.Connection, digests: Iterable[str]) -> None:
        """Unlink the blobs no file references any more. Called inside the write transaction,
        before its commit: after it, another writer could store the same content again and
        find the blob still there, just before this unlinks it. (Should the commit then fail,
        the row remains without its content: content its owner was deleting.)"""
        for digest in set(digests):
            if conn.execute("SELECT 1 FROM files WHERE digest = ? LIMIT 1", (digest,)).fetchone():
                continue
            self._blobs.remove(digest)

    def _put_response(self, response: StoredResponse) -> None:
        with contextlib.closing(self._index.connect()) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO responses (owner, id, body, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    response.owner,
                    response.id,
                    response.body,
                    response.created_at,
                    response.expires_at,
                ),
            )

    def _get_response(self, owner: str, response_id: str, now: int) -> bytes | None:
        with contextlib.closing(self._index.connect()) as conn:
            row = conn.execute(
                f"SELECT body FROM responses WHERE owner = ? AND id = ? AND {_LIVE}",
                (owner, response_id, now),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def _delete_response(self, owner: str, response_id: str) -> bool:
        with contextlib.closing(self._index.connect()) as conn:
            deleted = conn.execute(
                "DELETE FROM responses WHERE owner = ? AND id = ?", (owner, response_id)
            ).rowcount
        return deleted > 0

    def _purge_expired(self, now: int) -> int:
        with self._index.write() as conn:
            digests = [
                digest
                for (digest,) in conn.execute(
                    "SELECT DISTINCT digest FROM files WHERE expires_at <= ?", (now,)
                )
            ]
            purged = conn.execute("DELETE FROM files WHERE expires_at <= ?", (now,)).rowcount
            purged += conn.execute("DELETE FROM responses WHERE expires_at <= ?", (now,)).rowcount
            self._drop_orphans(conn, digests)
        # Temporary files of uploads that crashed before their rename; judged by the clock,
        # not by ``now``, so that an upload in progress in another process is never touched.
        self._blobs.sweep_temps()
        return purged


def _file_row(record: FileRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.owner,
        record.filename,
        record.purpose,
        record.media_type,
        record.bytes,
        record.digest,
        record.created_at,
        record.expires_at,
    )
