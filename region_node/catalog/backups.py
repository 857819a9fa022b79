"""Backups and replicas (a replica is a backup whose origin is another region), their disks,
their manifests (every non-zero chunk of every disk), replication records and holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from csbs.errors import BackupNotFound
from region_node.catalog import Row, manifests
from region_node.models import (
    Backup,
    BackupStatus,
    Disk,
    ManifestEntry,
    Origin,
    RecordStatus,
    ReplicationRecord,
    ReplicationWay,
    ServerStatus,
    ServerType,
)

BACKUP_COLUMNS = (
    "backup_id, project_id, name, description, server_id, server_type, status, error_reason, "
    "bytes_to_read, bytes_read, bytes_stored, policy_id, origin_replicated, origin_region_id, "
    "origin_project_id, origin_backup_id, origin_way, origin_policy_id, origin_job_id, "
    "created_at, updated_at, completed_at"
)
# States that exist only while work runs; see region_node.node for what start-up does with them.
WORKING = (BackupStatus.CREATING, BackupStatus.RESTORING, BackupStatus.REPLICATING)
# A backup that holds every chunk it names: it can be a base, a dedup source, restored.
WHOLE = (BackupStatus.AVAILABLE, BackupStatus.RESTORING)


def _at(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def row(conn: sqlite3.Connection, project_id: str | None, backup_id: str) -> Row:
    """The backup's row; in `project_id` unless it is None (the coordinator's own calls)."""
    found: Row | None = conn.execute(
        f"SELECT {BACKUP_COLUMNS} FROM backups WHERE backup_id = ?", (backup_id,)
    ).fetchone()
    if found is None or (project_id is not None and found["project_id"] != project_id):
        raise BackupNotFound(backup_id, project_id)
    return found


def to_backup(conn: sqlite3.Connection, r: Row, bytes_read: int | None = None) -> Backup:
    """The backup of a row, with its disks, records and images; `bytes_read` of running work
    when known (it is kept in memory while the backup runs)."""
    backup_id = r["backup_id"]
    now = datetime.now(UTC)
    return Backup(
        backup_id=backup_id,
        project_id=r["project_id"],
        name=r["name"],
        description=r["description"],
        server_id=r["server_id"],
        server_type=ServerType(r["server_type"]),
        disks=disks(conn, backup_id),
        status=BackupStatus(r["status"]),
        error_reason=r["error_reason"],
        bytes_to_read=r["bytes_to_read"],
        bytes_read=r["bytes_read"] if bytes_read is None else bytes_read,
        bytes_stored=r["bytes_stored"],
        policy_id=r["policy_id"],
        origin=Origin(
            replicated=bool(r["origin_replicated"]),
            source_region_id=r["origin_region_id"],
            source_project_id=r["origin_project_id"],
            source_backup_id=r["origin_backup_id"],
            way=ReplicationWay(r["origin_way"]),
            policy_id=r["origin_policy_id"],
            job_id=r["origin_job_id"],
        ),
        replications=records(conn, backup_id),
        image_ids=tuple(
            i["image_id"]
            for i in conn.execute(
                "SELECT image_id FROM images WHERE backup_id = ? ORDER BY seq", (backup_id,)
            )
        ),
        created_at=_at(r["created_at"]) or now,
        updated_at=_at(r["updated_at"]) or now,
        completed_at=_at(r["completed_at"]),
    )


def disks(conn: sqlite3.Connection, backup_id: str) -> tuple[Disk, ...]:
    return tuple(
        Disk(r["disk_index"], r["disk_id"], r["size_bytes"])
        for r in conn.execute(
            "SELECT disk_index, disk_id, size_bytes FROM backup_disks WHERE backup_id = ? "
            "ORDER BY disk_index",
            (backup_id,),
        )
    )


def records(conn: sqlite3.Connection, backup_id: str) -> tuple[ReplicationRecord, ...]:
    now = datetime.now(UTC)
    return tuple(
        ReplicationRecord(
            target_region_id=r["target_region_id"],
            target_project_id=r["target_project_id"],
            replica_id=r["replica_id"],
            way=ReplicationWay(r["way"]),
            policy_id=r["policy_id"],
            job_id=r["job_id"],
            status=RecordStatus(r["status"]),
            failure_reason=r["failure_reason"],
            replica_deleted=bool(r["replica_deleted"]),
            updated_at=_at(r["updated_at"]) or now,
        )
        for r in conn.execute(
            "SELECT target_region_id, target_project_id, replica_id, way, policy_id, job_id, "
            "status, failure_reason, replica_deleted, updated_at FROM replication_records "
            "WHERE backup_id = ? ORDER BY updated_at",
            (backup_id,),
        )
    )


def insert(
    conn: sqlite3.Connection,
    backup_id: str,
    project_id: str,
    name: str,
    description: str,
    server_id: str,
    server_type: int,
    policy_id: str,
    seq: int,
    now: float,
) -> None:
    """A backup being taken (CREATING)."""
    conn.execute(
        "INSERT INTO backups(backup_id, project_id, name, description, server_id, "
        "server_type, status, policy_id, created_at, updated_at, seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            backup_id,
            project_id,
            name,
            description,
            server_id,
            server_type,
            BackupStatus.CREATING,
            policy_id,
            now,
            now,
            seq,
        ),
    )


def insert_disks(
    conn: sqlite3.Connection, backup_id: str, rows: Iterable[Disk], epoch: int
) -> None:
    conn.executemany(
        "INSERT INTO backup_disks(backup_id, disk_index, disk_id, size_bytes, epoch) "
        "VALUES (?, ?, ?, ?, ?)",
        [(backup_id, d.disk_index, d.disk_id, d.size_bytes, epoch) for d in rows],
    )


def base_of(conn: sqlite3.Connection, disk_id: str, backup_id: str) -> Row | None:
    """The newest whole backup made here of a disk (not `backup_id`): an incremental backup
    reads only what was written since its epoch and shares the rest of its manifest."""
    found: Row | None = conn.execute(
        "SELECT bd.backup_id, bd.epoch, bd.disk_index FROM backup_disks bd "
        "JOIN backups b ON b.backup_id = bd.backup_id "
        "WHERE bd.disk_id = ? AND b.status IN (?, ?) AND b.origin_replicated = 0 "
        "AND bd.backup_id != ? ORDER BY bd.epoch DESC LIMIT 1",
        (disk_id, *WHOLE, backup_id),
    ).fetchone()
    return found


def set_bytes_to_read(conn: sqlite3.Connection, backup_id: str, total: int) -> None:
    conn.execute("UPDATE backups SET bytes_to_read = ? WHERE backup_id = ?", (total, backup_id))


def first_chunk_lacking(conn: sqlite3.Connection, backup_id: str) -> bytes:
    found = conn.execute(
        "SELECT m.hash FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash "
        "WHERE m.backup_id = ? AND c.hash IS NULL LIMIT 1",
        (backup_id,),
    ).fetchone()
    return bytes(found["hash"]) if found else b""


def mark_available(
    conn: sqlite3.Connection, backup_id: str, bytes_read: int, bytes_stored: int, now: float
) -> bool:
    """A backup being taken becomes AVAILABLE; False if it is no longer being taken (a chunk
    it names was found damaged meanwhile, see engine.damage)."""
    cursor = conn.execute(
        "UPDATE backups SET status = ?, bytes_read = ?, bytes_stored = ?, updated_at = ?, "
        "completed_at = ? WHERE backup_id = ? AND status = ?",
        (
            BackupStatus.AVAILABLE,
            bytes_read,
            bytes_stored,
            now,
            now,
            backup_id,
            BackupStatus.CREATING,
        ),
    )
    return cursor.rowcount == 1


def status_of(conn: sqlite3.Connection, backup_id: str) -> BackupStatus | None:
    found = conn.execute("SELECT status FROM backups WHERE backup_id = ?", (backup_id,)).fetchone()
    return None if found is None else BackupStatus(found["status"])


def set_status(conn: sqlite3.Connection, backup_id: str, status: BackupStatus) -> None:
    conn.execute("UPDATE backups SET status = ? WHERE backup_id = ?", (status, backup_id))


def end_restoring(conn: sqlite3.Connection, backup_id: str) -> None:
    conn.execute(
        "UPDATE backups SET status = ? WHERE backup_id = ? AND status = ?",
        (BackupStatus.AVAILABLE, backup_id, BackupStatus.RESTORING),
    )


def mark_error(
    conn: sqlite3.Connection,
    backup_ids: Iterable[str],
    reason: str,
    now: float,
    only: tuple[BackupStatus, ...] = (),
) -> None:
    """Backups that can no longer be restored (or never finished): ERROR, saying why; only
    those in one of the `only` states when given."""
    statuses = only or tuple(BackupStatus)
    marks = ", ".join("?" * len(statuses))
    conn.executemany(
        "UPDATE backups SET status = ?, error_reason = ?, updated_at = ? "
        f"WHERE backup_id = ? AND status IN ({marks})",
        [(BackupStatus.ERROR, reason, now, backup_id, *statuses) for backup_id in backup_ids],
    )


def delete(
    conn: sqlite3.Connection, backup_id: str, on_freed: Callable[[list[bytes]], None]
) -> None:
    """Removes a backup or replica with everything that names it; `on_freed` gets the hashes
    of each manifest page it alone listed (what may be free now; see catalog.manifests)."""
    manifests.drop(conn, backup_id, on_freed)
    for table in ("backup_disks", "replication_records", "backups"):
        conn.execute(f"DELETE FROM {table} WHERE backup_id = ?", (backup_id,))
    conn.execute("DELETE FROM replica_arrivals WHERE replica_id = ?", (backup_id,))
    conn.execute("DELETE FROM requests WHERE kind = 'backup' AND resource_id = ?", (backup_id,))


def manifest(conn: sqlite3.Connection, backup_id: str) -> list[ManifestEntry]:
    return [
        ManifestEntry(r["disk_index"], r["chunk_index"], r["hash"], r["length"])
        for r in conn.execute(
            "SELECT disk_index, chunk_index, hash, length FROM manifest WHERE backup_id = ? "
            "ORDER BY disk_index, chunk_index",
            (backup_id,),
        )
    ]


def manifest_bytes(conn: sqlite3.Connection, backup_id: str) -> int:
    return int(
        conn.execute(
            "SELECT COALESCE(SUM(length), 0) AS n FROM manifest WHERE backup_id = ?", (backup_id,)
        ).fetchone()["n"]
    )


def image_of(conn: sqlite3.Connection, backup_id: str) -> str | None:
    found = conn.execute(
        "SELECT image_id FROM images WHERE backup_id = ? LIMIT 1", (backup_id,)
    ).fetchone()
    return None if found is None else str(found["image_id"])


def in_progress_of_server(conn: sqlite3.Connection, server_id: str) -> str | None:
    found = conn.execute(
        "SELECT backup_id FROM backups WHERE server_id = ? AND status IN (?, ?)",
        (server_id, BackupStatus.CREATING, BackupStatus.RESTORING),
    ).fetchone()
    return None if found is None else str(found["backup_id"])


def disk_ids(conn: sqlite3.Connection, backup_id: str) -> list[str]:
    return [
        r["disk_id"]
        for r in conn.execute(
            "SELECT disk_id FROM backup_disks WHERE backup_id = ? ORDER BY disk_index",
            (backup_id,),
        )
    ]


def onto_server(
    conn: sqlite3.Connection, backup_id: str, server_id: str, same_server: bool
) -> list[tuple[int, str]]:
    """(backup disk index, server disk ID) of each disk a fill writes. Onto the backup's own
    server (a restore) by disk index; onto a server made from an image by position: its disks
    are the backup's, numbered from 0 (a backup of disks 1 and 3 makes disks 0 and 1)."""
    backup_disks = [d.disk_index for d in disks(conn, backup_id)]
    server_disks = {
        r["disk_index"]: r["disk_id"]
        for r in conn.execute(
            "SELECT disk_index, disk_id FROM disks WHERE server_id = ?", (server_id,)
        )
    }
    if same_server:
        return [(i, server_disks[i]) for i in backup_disks if i in server_disks]
    return [
        (i, server_disks[position])
        for position, i in enumerate(backup_disks)
        if position in server_disks
    ]


def chunks_of_disk_lacking(conn: sqlite3.Connection, backup_id: str, disk_index: int) -> int:
    """How many chunks a backup's disk names that the chunk index does not hold (one pass)."""
    return int(
        conn.execute(
            "SELECT COUNT(*) AS n FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash "
            "WHERE m.backup_id = ? AND m.disk_index = ? AND c.hash IS NULL",
            (backup_id, disk_index),
        ).fetchone()["n"]
    )


# -- start-up -------------------------------------------------------------------------------
def fail_interrupted(conn: sqlite3.Connection, reason: str, now: float) -> list[str]:
    """Backups being taken when the node stopped become ERROR, and their manifest goes; so does
    the manifest of a backup a damaged chunk made ERROR while it was being taken (never
    completed, not a replica), if the node stopped before its engine dropped it."""
    interrupted = [
        r["backup_id"]
        for r in conn.execute(
            "SELECT backup_id FROM backups WHERE status = ?", (BackupStatus.CREATING,)
        )
    ]
    failed_while_taken = [
        r["backup_id"]
        for r in conn.execute(
            "SELECT b.backup_id FROM backups b WHERE b.status = ? AND b.completed_at IS NULL "
            "AND b.origin_replicated = 0 "
            "AND EXISTS (SELECT 1 FROM backup_pages p WHERE p.backup_id = b.backup_id)",
            (BackupStatus.ERROR,),
        )
    ]
    for backup_id in interrupted + failed_while_taken:
        # What only they named is freed by the chunk store's sweep that follows at start.
        manifests.drop(conn, backup_id, lambda hashes: None)
    mark_error(conn, interrupted, reason, now)
    return interrupted


def settle_restoring(conn: sqlite3.Connection) -> None:
    """A backup stays RESTORING exactly while a server is being restored from it (that restore
    resumes at start); any other RESTORING backup is AVAILABLE again."""
    conn.execute(
        "UPDATE backups SET status = CASE WHEN EXISTS (SELECT 1 FROM servers s "
        "WHERE s.restoring_backup_id = backups.backup_id AND s.status = ?) "
        "THEN ? ELSE ? END WHERE status = ?",
        (
            ServerStatus.RESTORING,
            BackupStatus.RESTORING,
            BackupStatus.AVAILABLE,
            BackupStatus.RESTORING,
        ),
    )


# -- replication records and holds ---------------------------------------------------------
def record(conn: sqlite3.Connection, backup_id: str, r: ReplicationRecord, now: float) -> None:
    conn.execute(
        "INSERT INTO replication_records(backup_id, job_id, target_region_id, "
        "target_project_id, replica_id, way, policy_id, status, failure_reason, "
        "replica_deleted, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(backup_id, job_id) DO UPDATE SET "
        "target_project_id = excluded.target_project_id, replica_id = excluded.replica_id, "
        "status = excluded.status, failure_reason = excluded.failure_reason, "
        "replica_deleted = excluded.replica_deleted, updated_at = excluded.updated_at",
        (
            backup_id,
            r.job_id,
            r.target_region_id,
            r.target_project_id,
            r.replica_id,
            int(r.way),
            r.policy_id,
            int(r.status),
            r.failure_reason,
            int(r.replica_deleted),
            now,
        ),
    )


def hold_of(conn: sqlite3.Connection, backup_id: str) -> str | None:
    """The job of some hold on the backup, if any."""
    found = conn.execute(
        "SELECT job_id FROM holds WHERE backup_id = ? LIMIT 1", (backup_id,)
    ).fetchone()
    return None if found is None else str(found["job_id"])


def is_held_by(conn: sqlite3.Connection, backup_id: str, job_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM holds WHERE backup_id = ? AND job_id = ?", (backup_id, job_id)
        ).fetchone()
        is not None
    )


def hold(conn: sqlite3.Connection, backup_id: str, job_id: str) -> None:
    conn.execute("INSERT INTO holds(backup_id, job_id) VALUES (?, ?)", (backup_id, job_id))


def release(conn: sqlite3.Connection, backup_id: str, job_id: str) -> None:
    conn.execute("DELETE FROM holds WHERE backup_id = ? AND job_id = ?", (backup_id, job_id))
