"""What only one of the two stores has: the SQLite store's files on disk, the PostgreSQL store's
secret URL and its reused connections. (The shared contract: ``test_store.py``.)"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.files.config import FilesConfig
from gateway.files.postgres_store import PostgresStore
from gateway.files.sqlite_store import SqliteStore
from gateway.files.store import NewFile, build_store
from tests.postgres import new_database, postgres_server

NOW = 10_000


def upload(data: bytes, owner: str = "alice") -> NewFile:
    return NewFile(owner, "a.png", "vision", "image/png", data, NOW - 100, None)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sqlite_keeps_private_content_addressed_files(tmp_path: Path) -> None:
    root = tmp_path / "data" / "vlm-gateway"
    store = SqliteStore(root)
    await store.open()
    record = await store.add_file(upload(b"\x89PNG pixels"), quota_bytes=0)
    blob = root / "blobs" / record.digest[:2] / record.digest
    assert blob.read_bytes() == b"\x89PNG pixels"
    assert [p.name for p in blob.parent.iterdir()] == [record.digest]  # no temporary file left
    for directory in (root, root / "blobs", blob.parent):
        assert mode(directory) == 0o700, directory
    for file in (blob, root / "index.sqlite3", root / "index.sqlite3-wal"):
        assert mode(file) == 0o600, file
    await store.aclose()


async def test_sqlite_purge_sweeps_temporary_files_of_crashed_uploads(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    record = await store.add_file(upload(b"pixels"), quota_bytes=0)
    shard = tmp_path / "blobs" / record.digest[:2]
    stale, fresh = shard / ".crashed.tmp", shard / ".uploading.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    hours_ago = time.time() - 7200
    os.utime(stale, (hours_ago, hours_ago))
    assert await store.purge_expired(NOW) == 0
    assert not stale.exists()
    assert fresh.exists()  # perhaps another process's upload in progress
    assert await store.read_file("alice", record.id, now=NOW) == b"pixels"


def test_build_store_picks_the_configured_store(tmp_path: Path) -> None:
    sqlite = build_store(FilesConfig(data_dir=str(tmp_path)))
    assert isinstance(sqlite, SqliteStore)
    postgres = build_store(FilesConfig(store="postgres", postgres_url="postgresql://u:pw@h/db"))
    assert isinstance(postgres, PostgresStore)


async def test_postgres_errors_never_show_the_url(postgres_url: str) -> None:
    wrong = postgres_url.replace("postgres:", "postgres:not-", 1)
    closed = "postgresql://postgres:hunter2-secret@127.0.0.1:1/postgres"
    for url, secret in ((wrong, wrong.split(":")[2].split("@")[0]), (closed, "hunter2-secret")):
        store = PostgresStore(url)
        assert secret not in repr(store)
        with pytest.raises(RuntimeError) as raised:
            await store.open()
        assert str(raised.value) == "cannot connect to the PostgreSQL file store"
        assert raised.value.__cause__ is None
        assert raised.value.__suppress_context__  # the driver's message is not in the trace
    with pytest.raises(ValueError, match="not a valid") as invalid:
        PostgresStore("postgresql://u:hunter2-secret@h/db?bogus_option=1")
    assert "hunter2" not in str(invalid.value)


async def test_postgres_replaces_connections_the_server_ended(postgres_url: str) -> None:
    url = new_database(postgres_url)
    store = PostgresStore(url)
    await store.open()  # its connection stays in the pool
    record = await store.add_file(upload(b"pixels"), quota_bytes=0)
    database = url.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE datname = %s",
            (database,),
        )
        assert await cursor.fetchone() == (1,)
    assert await store.read_file("alice", record.id, now=NOW) == b"pixels"
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_file("alice", record.id, now=NOW)
