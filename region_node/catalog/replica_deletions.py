"""The replicas deleted in this region (issue 11): one row per replica a user (or a policy's
replica retention) deleted, written in the transaction that deletes it, read by the coordinator
in order of `seq` so that the source backup's replication record follows its replica. A failed
job's leftover removed by its job is not recorded: its record says failed already."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

MAX_PAGE = 1000


@dataclass(frozen=True)
class DeletedReplica:
    seq: int
    replica_id: str
    job_id: str  # the replication job that made it
    source_region_id: str
    source_backup_id: str
    deleted_at: float


def record(conn: sqlite3.Connection, backup_id: str, now: float) -> None:
    """Called before a backup's row is deleted: if it is a replica, remembers its deletion."""
    conn.execute(
        "INSERT INTO replica_deletions(replica_id, job_id, source_region_id, source_backup_id, "
        "deleted_at) SELECT backup_id, origin_job_id, origin_region_id, origin_backup_id, ? "
        "FROM backups WHERE backup_id = ? AND origin_replicated = 1 AND origin_job_id != ''",
        (now, backup_id),
    )


def after(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[DeletedReplica]:
    rows = conn.execute(
        "SELECT seq, replica_id, job_id, source_region_id, source_backup_id, deleted_at "
        "FROM replica_deletions WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [
        DeletedReplica(
            r["seq"],
            r["replica_id"],
            r["job_id"],
            r["source_region_id"],
            r["source_backup_id"],
            r["deleted_at"],
        )
        for r in rows
    ]


def last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(seq), 0) AS last FROM replica_deletions").fetchone()
    return int(row["last"])
