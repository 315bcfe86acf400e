"""The shared file store: metadata and content in PostgreSQL, seen alike by every replica.

Three tables: ``vlm_blobs`` (each distinct content once, keyed by its SHA-256), ``vlm_files``
(metadata, referencing a blob) and ``vlm_responses``. Concurrency between replicas rests on
transaction-scoped advisory locks, all released by the commit:

* per owner, around the quota check and the insert, so two uploads of one key cannot both fit
  in the room left for one;
* per digest, around adding a reference to a blob and around deleting a blob nobody
  references, so a delete cannot remove content that a concurrent upload is about to use (each
  statement after taking the lock sees what the holder before it committed);
* one for ``purge_expired`` (replicas purge on the same timer) and one for the schema (two
  replicas starting at once would otherwise race in ``CREATE TABLE IF NOT EXISTS``).

The URL carries a password: it is kept out of every exception, log line and ``repr`` (the
connections are made by ``gateway.files.postgres_pool``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any, Literal

from psycopg import AsyncConnection

from gateway.files.postgres_pool import PostgresPool
from gateway.files.store import FileRecord, NewFile, QuotaExceeded, StoredResponse, new_file_id

__all__ = ("PostgresStore",)

_FILE_COLUMNS = "id, owner, filename, purpose, media_type, bytes, digest, created_at, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > %s)"
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS vlm_blobs (digest text PRIMARY KEY, data bytea NOT NULL)",
    # COLLATE "C": ids are ordered (list cursors) by their bytes, whatever the database locale.
    """CREATE TABLE IF NOT EXISTS vlm_files (
        id text COLLATE "C" PRIMARY KEY,
        owner text NOT NULL,
        filename text NOT NULL,
        purpose text NOT NULL,
        media_type text NOT NULL,
        bytes bigint NOT NULL,
        digest text NOT NULL REFERENCES vlm_blobs (digest),
        created_at bigint NOT NULL,
        expires_at bigint
    )""",
    "CREATE INDEX IF NOT EXISTS vlm_files_by_owner ON vlm_files (owner, created_at, id)",
    "CREATE INDEX IF NOT EXISTS vlm_files_by_digest ON vlm_files (digest)",
    """CREATE INDEX IF NOT EXISTS vlm_files_by_expiry ON vlm_files (expires_at)
        WHERE expires_at IS NOT NULL""",
    # Keyed by owner too: one key can never replace another's response, whatever id it names.
    """CREATE TABLE IF NOT EXISTS vlm_responses (
        owner text NOT NULL,
        id text NOT NULL,
        body bytea NOT NULL,
        created_at bigint NOT NULL,
        expires_at bigint,
        PRIMARY KEY (owner, id)
    )""",
    """CREATE INDEX IF NOT EXISTS vlm_responses_by_expiry ON vlm_responses (expires_at)
        WHERE expires_at IS NOT NULL""",
)


class PostgresStore:
    """Files and stored responses in the database at ``url`` (``postgresql://...`` or a libpq
    ``key=value`` string), over at most ``max_connections`` connections of this process."""

    def __init__(self, url: str, *, max_connections: int = 8) -> None:
        self._pool = PostgresPool(url, size=max_connections)

    def __repr__(self) -> str:
        return "PostgresStore(<url hidden>)"

    async def open(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(_LOCK, ("vlm-gateway:schema",))
            for statement in _SCHEMA:
                await conn.execute(statement)

    async def aclose(self) -> None:
        await self._pool.close()

    async def add_file(self, file: NewFile, *, quota_bytes: int) -> FileRecord:
        record = FileRecord(
            id=new_file_id(),
            owner=file.owner,
            filename=file.filename,
            purpose=file.purpose,
            media_type=file.media_type,
            bytes=len(file.data),
            digest=await asyncio.to_thread(_sha256, file.data),  # 32 MiB: tens of milliseconds
            created_at=file.created_at,
            expires_at=file.expires_at,
        )
        async with self._pool.connection() as conn, conn.transaction():
            if quota_bytes:
                await conn.execute(_LOCK, (f"owner:{file.owner}",))
                cursor = await conn.execute(
                    "SELECT COALESCE(SUM(bytes), 0)::bigint FROM vlm_files "
                    f"WHERE owner = %s AND {_LIVE}",
                    (file.owner, file.created_at),
                )
                used = _one(await cursor.fetchone())
                if used + record.bytes > quota_bytes:
                    raise QuotaExceeded(used, quota_bytes)
            await conn.execute(_LOCK, (f"blob:{record.digest}",))
            await conn.execute(
                "INSERT INTO vlm_blobs (digest, data) VALUES (%s, %b) ON CONFLICT DO NOTHING",
                (record.digest, file.data),
            )
            await conn.execute(
                f"INSERT INTO vlm_files ({_FILE_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    record.id,
                    record.owner,
                    record.filename,
                    record.purpose,
                    record.media_type,
                    record.bytes,
                    record.digest,
                    record.created_at,
                    record.expires_at,
                ),
            )
        return record

    async def get_file(self, owner: str, file_id: str, *, now: int) -> FileRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM vlm_files WHERE id = %s AND owner = %s AND {_LIVE}",
                (file_id, owner, now),
            )
            row = await cursor.fetchone()
        return None if row is None else FileRecord(*row)

    async def read_file(self, owner: str, file_id: str, *, now: int) -> bytes | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT b.data FROM vlm_files f JOIN vlm_blobs b ON b.digest = f.digest "
                "WHERE f.id = %s AND f.owner = %s "
                "AND (f.expires_at IS NULL OR f.expires_at > %s)",
                (file_id, owner, now),
                binary=True,  # the bytes as they are, not hex text twice their size
            )
            row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

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
        where = [f"owner = %s AND {_LIVE}"]
        params: list[Any] = [owner, now]
        if purpose is not None:
            where.append("purpose = %s")
            params.append(purpose)
        direction, beyond = ("ASC", ">") if order == "asc" else ("DESC", "<")
        async with self._pool.connection() as conn:
            if after is not None:
                cursor = await conn.execute(
                    "SELECT created_at, id FROM vlm_files WHERE owner = %s AND id = %s",
                    (owner, after),
                )
                position = await cursor.fetchone()
                if position is not None:
                    where.append(f"(created_at, id) {beyond} (%s, %s)")
                    params.extend(position)
            cursor = await conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM vlm_files WHERE {' AND '.join(where)} "
                f"ORDER BY created_at {direction}, id {direction} LIMIT %s",
                (*params, max(limit, 0)),
            )
            rows = await cursor.fetchall()
        return [FileRecord(*row) for row in rows]

    async def delete_file(self, owner: str, file_id: str) -> bool:
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "DELETE FROM vlm_files WHERE id = %s AND owner = %s RETURNING digest",
                (file_id, owner),
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            await _drop_orphans(conn, [row[0]])
        return True

    async def put_response(self, response: StoredResponse) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO vlm_responses (owner, id, body, created_at, expires_at) "
                "VALUES (%s, %s, %b, %s, %s) ON CONFLICT (owner, id) DO UPDATE SET "
                "body = EXCLUDED.body, created_at = EXCLUDED.created_at, "
                "expires_at = EXCLUDED.expires_at",
                (
                    response.owner,
                    response.id,
                    response.body,
                    response.created_at,
                    response.expires_at,
                ),
            )

    async def get_response(self, owner: str, response_id: str, *, now: int) -> bytes | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT body FROM vlm_responses WHERE owner = %s AND id = %s AND {_LIVE}",
                (owner, response_id, now),
                binary=True,
            )
            row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def delete_response(self, owner: str, response_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM vlm_responses WHERE owner = %s AND id = %s", (owner, response_id)
            )
            return cursor.rowcount > 0

    async def purge_expired(self, now: int) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            # Replicas purge on the same timer: one at a time, the next finds nothing to do.
            await conn.execute(_LOCK, ("vlm-gateway:purge",))
            cursor = await conn.execute(
                "DELETE FROM vlm_files WHERE expires_at <= %s RETURNING digest", (now,)
            )
            digests = [digest for (digest,) in await cursor.fetchall()]
            cursor = await conn.execute("DELETE FROM vlm_responses WHERE expires_at <= %s", (now,))
            purged = len(digests) + cursor.rowcount
            await _drop_orphans(conn, digests)
        return purged


async def _drop_orphans(conn: AsyncConnection[Any], digests: Iterable[str]) -> None:
    """Delete the blobs no file references any more, each under its digest's lock, taken in
    sorted order (a purge takes many: two in opposite orders could deadlock)."""
    for digest in sorted(set(digests)):
        await conn.execute(_LOCK, (f"blob:{digest}",))
        await conn.execute(
            "DELETE FROM vlm_blobs WHERE digest = %s "
            "AND NOT EXISTS (SELECT 1 FROM vlm_files WHERE digest = %s)",
            (digest, digest),
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one(row: tuple[Any, ...] | None) -> int:
    assert row is not None  # an aggregate always yields a row
    return int(row[0])
