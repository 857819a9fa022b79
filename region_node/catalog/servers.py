"""Servers, their disks, and which chunks of each disk were written in which epoch."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime

from csbs.errors import ServerNotFound
from region_node.catalog import Row
from region_node.catalog.manifests import PAGE
from region_node.models import Disk, Server, ServerStatus, ServerType

SERVER_COLUMNS = (
    "server_id, project_id, name, server_type, status, image_id, restoring_backup_id, "
    "error_reason, created_at, updated_at"
)


def insert(
    conn: sqlite3.Connection,
    server_id: str,
    project_id: str,
    name: str,
    server_type: int,
    status: ServerStatus,
    image_id: str,
    disks: Iterable[Disk],
    seq: int,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO servers(server_id, project_id, name, server_type, status, image_id, "
        "created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (server_id, project_id, name, server_type, status, image_id, now, now, seq),
    )
    conn.executemany(
        "INSERT INTO disks(disk_id, server_id, disk_index, size_bytes) VALUES (?, ?, ?, ?)",
        [(d.disk_id, server_id, d.disk_index, d.size_bytes) for d in disks],
    )


def row(conn: sqlite3.Connection, project_id: str, server_id: str) -> Row:
    found: Row | None = conn.execute(
        f"SELECT {SERVER_COLUMNS} FROM servers WHERE server_id = ? AND project_id = ?",
        (server_id, project_id),
    ).fetchone()
    if found is None:
        raise ServerNotFound(server_id)
    return found


def to_server(conn: sqlite3.Connection, r: Row, done: int = 0, total: int = 0) -> Server:
    """The server of a row, with its disks and the progress of work on it (`done` of
    `total` bytes, while it is being filled)."""
    return Server(
        server_id=r["server_id"],
        project_id=r["project_id"],
        name=r["name"],
        server_type=ServerType(r["server_type"]),
        status=ServerStatus(r["status"]),
        disks=disks(conn, r["server_id"]),
        image_id=r["image_id"],
        error_reason=r["error_reason"],
        progress_total=total,
        progress_done=done,
        created_at=datetime.fromtimestamp(r["created_at"], UTC),
        updated_at=datetime.fromtimestamp(r["updated_at"], UTC),
    )


def disks(conn: sqlite3.Connection, server_id: str) -> tuple[Disk, ...]:
    return tuple(
        Disk(r["disk_index"], r["disk_id"], r["size_bytes"])
        for r in conn.execute(
            "SELECT disk_index, disk_id, size_bytes FROM disks WHERE server_id = ? "
            "ORDER BY disk_index",
            (server_id,),
        )
    )


def disk_id(conn: sqlite3.Connection, server_id: str, disk_index: int) -> str | None:
    found = conn.execute(
        "SELECT disk_id FROM disks WHERE server_id = ? AND disk_index = ?",
        (server_id, disk_index),
    ).fetchone()
    return None if found is None else str(found["disk_id"])


def disk_size_and_epoch(conn: sqlite3.Connection, disk_id: str) -> tuple[int, int] | None:
    found = conn.execute(
        "SELECT size_bytes, epoch FROM disks WHERE disk_id = ?", (disk_id,)
    ).fetchone()
    return None if found is None else (found["size_bytes"], found["epoch"])


def all_disk_ids(conn: sqlite3.Connection) -> set[str]:
    return {r["disk_id"] for r in conn.execute("SELECT disk_id FROM disks")}


def disk_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(the servers' disks the region holds, their bytes)."""
    row = conn.execute(
        "SELECT COUNT(*) AS disks, COALESCE(SUM(size_bytes), 0) AS size FROM disks"
    ).fetchone()
    return int(row["disks"]), int(row["size"])


def set_status(
    conn: sqlite3.Connection,
    server_id: str,
    status: ServerStatus,
    reason: str,
    restoring_backup_id: str,
    now: float,
) -> None:
    conn.execute(
        "UPDATE servers SET status = ?, error_reason = ?, restoring_backup_id = ?, "
        "updated_at = ? WHERE server_id = ?",
        (status, reason, restoring_backup_id, now, server_id),
    )


def unfinished(conn: sqlite3.Connection) -> list[Row]:
    """Servers whose work was running when the node stopped: created from an image, being
    restored, being deleted."""
    return conn.execute(
        f"SELECT {SERVER_COLUMNS} FROM servers WHERE status IN (?, ?, ?)",
        (ServerStatus.CREATING, ServerStatus.RESTORING, ServerStatus.DELETING),
    ).fetchall()


def delete(conn: sqlite3.Connection, server_id: str) -> list[str]:
    """Removes a server, its disks and their written-chunk rows. Returns the disks' IDs."""
    disk_ids = [
        r["disk_id"]
        for r in conn.execute("SELECT disk_id FROM disks WHERE server_id = ?", (server_id,))
    ]
    conn.executemany("DELETE FROM written_chunks WHERE disk_id = ?", [(d,) for d in disk_ids])
    conn.execute("DELETE FROM disks WHERE server_id = ?", (server_id,))
    conn.execute("DELETE FROM servers WHERE server_id = ?", (server_id,))
    return disk_ids


def disk_ids(conn: sqlite3.Connection, server_id: str) -> list[str]:
    return [
        r["disk_id"]
        for r in conn.execute("SELECT disk_id FROM disks WHERE server_id = ?", (server_id,))
    ]


# -- written chunks (what makes backups incremental) ---------------------------------------------
def mark_written(
    conn: sqlite3.Connection, disk_id: str, chunk_indexes: Iterable[int], epoch: int
) -> None:
    """Chunks of a disk written (or about to be) in `epoch`: committed before the write."""
    conn.executemany(
        "INSERT INTO written_chunks(disk_id, chunk_index, epoch) VALUES (?, ?, ?) "
        "ON CONFLICT(disk_id, chunk_index) DO UPDATE SET epoch = excluded.epoch",
        [(disk_id, i, epoch) for i in chunk_indexes],
    )


def mark_filled(
    conn: sqlite3.Connection, disk_id: str, backup_id: str, disk_index: int, epoch: int
) -> None:
    """Before a disk is written from a backup's disk: every chunk the disk ever had written
    (zeroed or rewritten now) and every chunk of the backup's disk change in `epoch`, so that
    the next backup reads them again. In SQL, whatever the number of chunks."""
    conn.execute("UPDATE written_chunks SET epoch = ? WHERE disk_id = ?", (epoch, disk_id))
    conn.execute(
        "INSERT INTO written_chunks(disk_id, chunk_index, epoch) "
        "SELECT ?, chunk_index, ? FROM manifest WHERE backup_id = ? AND disk_index = ? "
        "ON CONFLICT(disk_id, chunk_index) DO UPDATE SET epoch = excluded.epoch",
        (disk_id, epoch, backup_id, disk_index),
    )


def written_not_in(
    conn: sqlite3.Connection, disk_id: str, backup_id: str, disk_index: int, after: int, limit: int
) -> list[int]:
    """Chunks the disk had written that the backup's disk does not hold (a restore zeroes them;
    a chunk never written is a hole already), after chunk `after`, at most `limit`, in order."""
    return [
        r["chunk_index"]
        for r in conn.execute(
            "SELECT w.chunk_index FROM written_chunks w WHERE w.disk_id = ? "
            "AND w.chunk_index > ? AND NOT EXISTS (SELECT 1 FROM backup_pages bp "
            "CROSS JOIN page_entries e ON e.page_id = bp.page_id "
            "WHERE bp.backup_id = ? AND bp.disk_index = ? AND bp.page_no = w.chunk_index / ? "
            "AND e.slot = w.chunk_index % ?) ORDER BY w.chunk_index LIMIT ?",
            (disk_id, after, backup_id, disk_index, PAGE, PAGE, limit),
        )
    ]


def written_since(conn: sqlite3.Connection, disk_id: str, epoch: int) -> list[int]:
    """The chunks of a disk written in an epoch after `epoch` (0: every chunk ever written)."""
    return [
        r["chunk_index"]
        for r in conn.execute(
            "SELECT chunk_index FROM written_chunks INDEXED BY written_chunks_by_epoch "
            "WHERE disk_id = ? AND epoch > ? ORDER BY chunk_index",
            (disk_id, epoch),
        )
    ]


def set_epoch(conn: sqlite3.Connection, disk_id: str, epoch: int) -> None:
    conn.execute("UPDATE disks SET epoch = ? WHERE disk_id = ?", (epoch, disk_id))
