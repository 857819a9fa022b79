"""The SQLite database every process keeps its state in: WAL, full sync, one connection under
one lock, a schema version (PRAGMA user_version) migrated on start, and one transaction per
logical step. Figures read for the metrics when they are scraped (issue 14) come from a
snapshot: a read-only connection of their own, which under WAL neither waits for the lock nor
holds up a writer, however long its scan takes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of this program."""


class Database:
    """`transaction()` gives the connection inside one transaction under the lock, so that a
    check and the write that depends on it are atomic; `read()` gives it under the same lock."""

    def __init__(self, path: Path, migrations: Mapping[int, str], what: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._lock = threading.RLock()
        self._migrate(migrations, what)

    def _migrate(self, migrations: Mapping[int, str], what: str) -> None:
        latest = max(migrations)
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > latest:
                raise SchemaTooNew(
                    f"{what} schema version {version} is newer than this program's {latest}"
                )
            for target in range(version + 1, latest + 1):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in migrations[target].split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version = {target}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._rollback()
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (a full disk) leaves the transaction open: undo it, so
                # the connection is usable again and nothing half-done stays.
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own (rows by column name), closed after the block:
        for scans that must not hold the lock (metrics). It sees the last committed state."""
        conn = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def next_seq(self, conn: sqlite3.Connection, name: str) -> int:
        """A monotonically increasing number, for stable list order (inside a transaction)."""
        row = conn.execute("SELECT value FROM sequence WHERE name = ?", (name,)).fetchone()
        value = (row[0] if row else 0) + 1
        conn.execute(
            "INSERT INTO sequence(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
        return int(value)

    def setting(self, key: str, default: str) -> str:
        """A persisted setting, written with `default` the first time it is read."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            if row:
                return str(row[0])
            conn.execute("INSERT INTO settings(key, value) VALUES (?, ?)", (key, default))
            return default

    def put_setting(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
