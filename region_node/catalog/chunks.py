"""The chunk index: where each stored chunk lives in the pack files. Only the chunk store
(region_node.storage.chunk_store) calls these, inside transactions of its callers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from region_node.catalog import Row


def location(conn: sqlite3.Connection, digest: bytes) -> Row | None:
    """(pack_id, offset, length) of an indexed chunk."""
    found: Row | None = conn.execute(
        "SELECT pack_id, offset, length FROM chunks WHERE hash = ?", (digest,)
    ).fetchone()
    return found


def add(conn: sqlite3.Connection, rows: Iterable[tuple[bytes, int, int, int]]) -> None:
    """(hash, pack_id, offset, length) rows; a chunk already indexed is left as it is."""
    conn.executemany(
        "INSERT OR IGNORE INTO chunks(hash, pack_id, offset, length) VALUES (?, ?, ?, ?)", rows
    )


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(chunks indexed, their bytes of data)."""
    row = conn.execute(
        "SELECT COUNT(*) AS chunks, COALESCE(SUM(length), 0) AS data_bytes FROM chunks"
    ).fetchone()
    return int(row["chunks"]), int(row["data_bytes"])


BATCH = 500  # hashes per IN (...) query


def batches(digests: Iterable[bytes]) -> Iterable[list[bytes]]:
    batch: list[bytes] = []
    for d in digests:
        batch.append(d)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def locations(conn: sqlite3.Connection, digests: Sequence[bytes]) -> list[Row]:
    """(hash, pack_id, offset, length) of those of `digests` (at most BATCH) indexed."""
    marks = ", ".join("?" * len(digests))
    return conn.execute(
        f"SELECT hash, pack_id, offset, length FROM chunks WHERE hash IN ({marks})", digests
    ).fetchall()


def remove_all(conn: sqlite3.Connection, digests: Sequence[bytes]) -> None:
    """Unindexes `digests` (at most BATCH) in one statement."""
    marks = ", ".join("?" * len(digests))
    conn.execute(f"DELETE FROM chunks WHERE hash IN ({marks})", digests)


def named_by_manifests(conn: sqlite3.Connection, digests: Sequence[bytes]) -> set[bytes]:
    """Those of `digests` (at most BATCH) that some manifest page names: a seek each."""
    marks = ", ".join("?" * len(digests))
    return {
        r["hash"]
        for r in conn.execute(
            "SELECT DISTINCT hash FROM page_entries INDEXED BY page_entries_by_hash "
            f"WHERE hash IN ({marks})",
            digests,
        )
    }


def named_by_no_manifest(conn: sqlite3.Connection) -> list[bytes]:
    """Indexed chunks no manifest names (what a crash between two steps can leave)."""
    return [
        r["hash"]
        for r in conn.execute(
            "SELECT hash FROM chunks WHERE NOT EXISTS "
            "(SELECT 1 FROM page_entries e WHERE e.hash = chunks.hash)"
        )
    ]


def extents_of_pack(conn: sqlite3.Connection, pack_id: int) -> list[Row]:
    """(offset, length) of the chunks indexed in a pack, in order."""
    return conn.execute(
        "SELECT offset, length FROM chunks WHERE pack_id = ? ORDER BY offset", (pack_id,)
    ).fetchall()


def pack_holds_any(conn: sqlite3.Connection, pack_id: int) -> bool:
    return (
        conn.execute("SELECT 1 FROM chunks WHERE pack_id = ? LIMIT 1", (pack_id,)).fetchone()
        is not None
    )
