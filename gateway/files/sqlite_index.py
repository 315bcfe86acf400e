"""The SQLite store's index: the database file ``index.sqlite3`` (WAL mode) with the ``files``
and ``responses`` tables, its connection settings and its write transactions.

Connections are opened per call (microseconds), by the store's worker threads. Several gateway
processes may share the file: SQLite's file locking serialises the writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ("SqliteIndex",)

_BUSY_TIMEOUT_MS = 30_000
"""How long a writer waits for another (process's) writer; longer than any one transaction."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    media_type TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_at, id);
CREATE INDEX IF NOT EXISTS files_by_digest ON files (digest);
CREATE INDEX IF NOT EXISTS files_by_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
-- Keyed by owner too: one key can never replace another's response, whatever id it names.
CREATE TABLE IF NOT EXISTS responses (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (owner, id)
);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at)
    WHERE expires_at IS NOT NULL;
"""


class SqliteIndex:
    """The database at ``path``. ``create``, ``connect`` and ``write`` block: call them from
    worker threads."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._anchor: sqlite3.Connection | None = None

    def create(self) -> None:
        """Create the file (mode 0600) and the tables if need be, and open the anchor."""
        # Created here, not by SQLite (which follows the umask: often 0644); its -wal and -shm
        # files take the database file's mode.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
        with contextlib.closing(self.connect()) as conn:
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        with self.write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        # Held open, unused, until ``aclose``: when the last connection to a WAL database
        # closes, SQLite checkpoints and deletes the log, which every call would otherwise
        # pay for (connections are per call), instead of a checkpoint every thousand pages.
        if self._anchor is None:
            self._anchor = self.connect(check_same_thread=False)

    async def aclose(self) -> None:
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            await asyncio.to_thread(anchor.close)  # the last one out checkpoints: disk I/O

    def connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=check_same_thread
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # FULL: a commit reaches the disk before the API answers that the file is stored (its
        # blob is fsynced too); WAL's default NORMAL may lose the last commits on power loss.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding the write lock from its start: IMMEDIATE, because a deferred
        one that reads first and then writes fails with SQLITE_BUSY (no waiting) when another
        connection wrote in between."""
        with contextlib.closing(self.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself after some errors
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
