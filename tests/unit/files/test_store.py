"""One contract, two stores: every test runs against the SQLite store (in ``tmp_path``) and the
PostgreSQL store (a real server, ``tests/postgres.py``, a fresh database per test)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
import pytest

from gateway.files.postgres_store import PostgresStore
from gateway.files.sqlite_store import SqliteStore
from gateway.files.store import FileRecord, NewFile, QuotaExceeded, Store, StoredResponse
from tests.postgres import new_database, postgres_server

NOW = 10_000


@dataclass
class Backend:
    make: Callable[[], Store]
    """A new, unopened store on the same data (another process, as far as it can tell)."""
    blobs: Callable[[], Awaitable[int]]
    """How many distinct contents are stored."""


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        root = tmp_path / "store"

        async def blob_files() -> int:
            return sum(1 for p in root.glob("blobs/*/*") if not p.name.startswith("."))

        return Backend(lambda: SqliteStore(root), blob_files)
    url = new_database(request.getfixturevalue("postgres_url"))

    async def blob_rows() -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cursor = await conn.execute("SELECT count(*) FROM vlm_blobs")
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    return Backend(lambda: PostgresStore(url), blob_rows)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = backend.make()
    await opened.open()
    yield opened
    await opened.aclose()


def upload(
    data: bytes = b"%PDF-1.7 content",
    *,
    owner: str = "alice",
    purpose: str = "user_data",
    created_at: int = NOW - 100,
    expires_at: int | None = None,
) -> NewFile:
    return NewFile(owner, "doc.pdf", purpose, "application/pdf", data, created_at, expires_at)


def response(
    owner: str = "alice", body: bytes = b"{}", expires_at: int | None = None
) -> StoredResponse:
    return StoredResponse("resp_1", owner, body, NOW - 100, expires_at)


async def test_a_file_is_stored_and_read_back(store: Store) -> None:
    record = await store.add_file(upload(b"hello"), quota_bytes=0)
    assert record.id.startswith("file-")
    assert (record.owner, record.bytes, record.expires_at) == ("alice", 5, None)
    assert record.digest == hashlib.sha256(b"hello").hexdigest()
    assert await store.get_file("alice", record.id, now=NOW) == record
    assert await store.read_file("alice", record.id, now=NOW) == b"hello"
    assert await store.get_file("alice", "file-000000000000000000000000", now=NOW) is None
    assert await store.delete_file("alice", record.id)
    assert not await store.delete_file("alice", record.id)
    assert await store.read_file("alice", record.id, now=NOW) is None


async def test_listing_orders_filters_and_pages(store: Store) -> None:
    times = [100, 100, 100, 101, 102, 103]  # ties: ordered by id
    files = [
        await store.add_file(
            upload(bytes([i]), purpose="vision" if i % 2 else "user_data", created_at=t),
            quota_bytes=0,
        )
        for i, t in enumerate(times)
    ]
    ascending = sorted(files, key=lambda f: (f.created_at, f.id))
    assert await store.list_files("alice", now=NOW, order="asc") == ascending
    assert await store.list_files("alice", now=NOW) == ascending[::-1]
    assert await store.list_files("alice", now=NOW, purpose="vision", order="asc") == [
        f for f in ascending if f.purpose == "vision"
    ]
    orders: list[tuple[Literal["asc", "desc"], list[FileRecord]]]
    orders = [("asc", ascending), ("desc", ascending[::-1])]
    for order, expected in orders:
        pages: list[list[FileRecord]] = []
        after = None
        while page := await store.list_files("alice", now=NOW, limit=2, after=after, order=order):
            pages.append(page)
            after = page[-1].id
        assert [len(p) for p in pages] == [2, 2, 2]
        assert [f for p in pages for f in p] == expected
    # An unknown cursor, or another owner's id, lists from the start.
    foreign = await store.add_file(upload(owner="bob"), quota_bytes=0)
    for cursor in ("file-ffffffffffffffffffffffff", foreign.id):
        assert await store.list_files("alice", now=NOW, limit=1, after=cursor) == ascending[-1:]
    assert await store.list_files("alice", now=NOW, limit=0) == []


async def test_owners_cannot_see_each_others_records(store: Store) -> None:
    record = await store.add_file(upload(), quota_bytes=0)
    await store.put_response(response())
    assert await store.get_file("bob", record.id, now=NOW) is None
    assert await store.read_file("bob", record.id, now=NOW) is None
    assert await store.list_files("bob", now=NOW) == []
    assert not await store.delete_file("bob", record.id)
    assert await store.get_response("bob", "resp_1", now=NOW) is None
    assert not await store.delete_response("bob", "resp_1")
    # Storing a response under the same id cannot replace alice's.
    await store.put_response(response("bob", b"bob's"))
    assert await store.get_response("alice", "resp_1", now=NOW) == b"{}"
    assert await store.get_response("bob", "resp_1", now=NOW) == b"bob's"
    assert await store.read_file("alice", record.id, now=NOW) == upload().data


async def test_the_quota_counts_live_files_of_one_owner(store: Store) -> None:
    await store.add_file(upload(b"x" * 100), quota_bytes=300)
    second = await store.add_file(upload(b"y" * 200), quota_bytes=300)  # exactly full
    with pytest.raises(QuotaExceeded) as raised:
        await store.add_file(upload(b"z"), quota_bytes=300)
    assert (raised.value.used, raised.value.quota) == (300, 300)
    await store.add_file(upload(b"z" * 300, owner="bob"), quota_bytes=300)  # bob's own quota
    assert await store.delete_file("alice", second.id)
    await store.add_file(upload(b"w" * 150, expires_at=NOW), quota_bytes=300)
    # At NOW the file above has expired: it no longer takes room.
    await store.add_file(upload(b"v" * 200, created_at=NOW), quota_bytes=300)
    with pytest.raises(QuotaExceeded):
        await store.add_file(upload(b"u", created_at=NOW), quota_bytes=300)
    await store.add_file(upload(b"t" * 1000, created_at=NOW), quota_bytes=0)  # 0: no quota


async def test_identical_content_is_stored_once(store: Store, backend: Backend) -> None:
    mine = await store.add_file(upload(b"same bytes"), quota_bytes=0)
    theirs = await store.add_file(upload(b"same bytes", owner="bob"), quota_bytes=0)
    assert mine.digest == theirs.digest
    assert mine.id != theirs.id
    assert await backend.blobs() == 1
    assert await store.delete_file("alice", mine.id)
    assert await store.read_file("bob", theirs.id, now=NOW) == b"same bytes"
    assert await backend.blobs() == 1
    assert await store.delete_file("bob", theirs.id)
    assert await backend.blobs() == 0


async def test_expired_records_are_invisible_then_purged(store: Store, backend: Backend) -> None:
    gone = await store.add_file(upload(b"old", expires_at=NOW), quota_bytes=0)
    shared = await store.add_file(upload(b"kept", expires_at=NOW - 1), quota_bytes=0)
    live = await store.add_file(upload(b"kept", expires_at=NOW + 1), quota_bytes=0)
    await store.put_response(response(expires_at=NOW))
    assert await store.get_file("alice", gone.id, now=NOW) is None
    assert await store.read_file("alice", shared.id, now=NOW) is None
    assert await store.get_file("alice", gone.id, now=NOW - 1) == gone
    assert await store.list_files("alice", now=NOW) == [live]
    assert await store.get_response("alice", "resp_1", now=NOW) is None
    assert await store.get_response("alice", "resp_1", now=NOW - 1) == b"{}"
    assert await backend.blobs() == 2

    assert await store.purge_expired(NOW) == 3  # two files and the response
    assert await store.purge_expired(NOW) == 0
    assert await backend.blobs() == 1  # "old" went; "kept" is still used by ``live``
    assert await store.read_file("alice", live.id, now=NOW) == b"kept"
    assert await store.get_file("alice", gone.id, now=NOW - 1) is None  # deleted, not hidden


async def test_responses_are_replaced_and_deleted(store: Store) -> None:
    await store.put_response(response(body=b"first"))
    await store.put_response(response(body=b"second", expires_at=NOW + 5))
    assert await store.get_response("alice", "resp_1", now=NOW) == b"second"
    assert await store.get_response("alice", "resp_1", now=NOW + 5) is None
    assert await store.delete_response("alice", "resp_1")
    assert not await store.delete_response("alice", "resp_1")
    assert await store.get_response("alice", "resp_1", now=NOW) is None


async def test_records_outlive_the_store_instance(store: Store, backend: Backend) -> None:
    record = await store.add_file(upload(b"durable"), quota_bytes=0)
    await store.put_response(response(body=b"kept"))
    await store.aclose()
    first, second = backend.make(), backend.make()
    await asyncio.gather(first.open(), second.open())  # two replicas starting at once
    try:
        assert await second.get_file("alice", record.id, now=NOW) == record
        assert await first.read_file("alice", record.id, now=NOW) == b"durable"
        assert await second.get_response("alice", "resp_1", now=NOW) == b"kept"
    finally:
        await first.aclose()
        await second.aclose()


async def test_concurrent_uploads_cannot_overrun_the_quota(store: Store, backend: Backend) -> None:
    other = backend.make()  # half the uploads through another instance: another replica
    await other.open()
    try:
        outcomes = await asyncio.gather(
            *(
                (store if i % 2 else other).add_file(upload(bytes([i]) * 100), quota_bytes=500)
                for i in range(10)
            ),
            return_exceptions=True,
        )
    finally:
        await other.aclose()
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(refused) == 5, outcomes
    assert all(e.quota == 500 and e.used == 500 for e in refused)
    assert sum(f.bytes for f in await store.list_files("alice", now=NOW)) == 500
