"""Replicas being copied in from another region: their rows, the chunks that have arrived for
them (issue 6: deduplication never crosses accounts), and what they still lack."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from region_node.catalog import manifests
from region_node.catalog.backups import WHOLE, insert_disks
from region_node.models import BackupStatus, ManifestEntry, ReplicaSpec


def of_job(conn: sqlite3.Connection, job_id: str) -> str | None:
    """The replica a replication job made here, if any."""
    found = conn.execute(
        "SELECT backup_id FROM backups WHERE origin_job_id = ?", (job_id,)
    ).fetchone()
    return None if found is None else str(found["backup_id"])


def insert(
    conn: sqlite3.Connection,
    replica_id: str,
    project_id: str,
    spec: ReplicaSpec,
    bytes_named: int,
    batches: Iterable[Sequence[ManifestEntry]],
    seq: int,
    now: float,
) -> None:
    """A replica in REPLICATING with its whole manifest, given in batches that name
    `bytes_named` bytes in all (its chunks arrive later)."""
    origin = spec.origin
    conn.execute(
        "INSERT INTO backups(backup_id, project_id, name, description, server_id, "
        "server_type, status, bytes_to_read, origin_replicated, origin_region_id, "
        "origin_project_id, origin_backup_id, origin_way, origin_policy_id, "
        "origin_job_id, created_at, updated_at, seq) "
        "VALUES (?, ?, ?, ?, '', ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            replica_id,
            project_id,
            spec.name,
            spec.description,
            int(spec.server_type),
            BackupStatus.REPLICATING,
            bytes_named,
            origin.source_region_id,
            origin.source_project_id,
            origin.source_backup_id,
            int(origin.way),
            origin.policy_id,
            spec.job_id,
            now,
            now,
            seq,
        ),
    )
    insert_disks(conn, replica_id, spec.disks, 0)
    manifests.add_replica_pages(conn, replica_id, (e for batch in batches for e in batch))


def add_arrivals(conn: sqlite3.Connection, replica_id: str, digests: Iterable[bytes]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO replica_arrivals(replica_id, hash) VALUES (?, ?)",
        [(replica_id, d) for d in digests],
    )


def lengths_named(
    conn: sqlite3.Connection, replica_id: str, digests: Sequence[bytes]
) -> dict[bytes, int]:
    """hash -> length of those of `digests` the replica's manifest names (per hash, a seek for
    each page naming it, then one for the replica among the backups listing that page: not in
    time with the manifest's size)."""
    marks = ", ".join("?" * len(digests))
    return {
        r["hash"]: r["length"]
        for r in conn.execute(
            "SELECT DISTINCT e.hash, e.length FROM page_entries e INDEXED BY page_entries_by_hash "
            "CROSS JOIN backup_pages bp INDEXED BY backup_pages_by_page "
            f"ON bp.page_id = e.page_id WHERE e.hash IN ({marks}) AND bp.backup_id = ?",
            (*digests, replica_id),
        )
    }


def _held(projects: Sequence[str]) -> str:
    """SQL of whether the account of `projects` already holds manifest entry m's chunk here:
    stored and either arrived for one of the account's replicas or named by one of its whole
    backups (issue 6). Per entry: a seek in `chunks`, then in replica_arrivals and in the
    pages naming the hash (page_entries_by_hash), whose listing backups are checked against the
    account's backups (a list made once per query; `+` keeps SQLite from seeking once per
    backup of the account instead, which costs more the more backups the account has)."""
    marks = ", ".join("?" * len(projects))
    return (
        "CASE WHEN c.hash IS NULL THEN 0 "
        "WHEN EXISTS (SELECT 1 FROM replica_arrivals a "
        "JOIN backups r ON r.backup_id = a.replica_id "
        f"WHERE a.hash = m.hash AND r.project_id IN ({marks})) THEN 1 "
        "WHEN EXISTS (SELECT 1 FROM page_entries o INDEXED BY page_entries_by_hash "
        "CROSS JOIN backup_pages ob INDEXED BY backup_pages_by_page ON ob.page_id = o.page_id "
        "WHERE o.hash = m.hash AND +ob.backup_id IN (SELECT backup_id FROM backups "
        f"WHERE project_id IN ({marks}) AND status IN (?, ?))) THEN 1 "
        "ELSE 0 END"
    )


def held_by_account(
    conn: sqlite3.Connection,
    replica_id: str,
    projects: Sequence[str],
    after: tuple[int, int] | None = None,
    limit: int = -1,
) -> list[tuple[int, int, bytes, int, bool]]:
    """Per manifest entry of the replica after position `after` (disk_index, chunk_index), in
    order, at most `limit`: (disk_index, chunk_index, hash, length, whether the account of
    `projects` already holds the chunk here; see _held)."""
    first = after if after is not None else (-1, -1)
    disk, chunk = first
    page = manifests.PAGE
    rows = conn.execute(
        f"SELECT bp.disk_index, bp.page_no * {page} + m.slot AS chunk_index, m.hash, m.length, "
        f"{_held(projects)} AS held FROM backup_pages bp "
        "CROSS JOIN page_entries m ON m.page_id = bp.page_id "
        "LEFT JOIN chunks c ON c.hash = m.hash WHERE bp.backup_id = ? "
        f"AND (bp.disk_index, bp.page_no) >= (?, ?) AND (bp.disk_index, bp.page_no * {page} "
        "+ m.slot) > (?, ?) ORDER BY bp.disk_index, bp.page_no, m.slot LIMIT ?",
        (*projects, *projects, *WHOLE, replica_id, disk, (chunk + 1) // page, disk, chunk, limit),
    ).fetchall()
    return [
        (r["disk_index"], r["chunk_index"], r["hash"], r["length"], bool(r["held"])) for r in rows
    ]


def held_totals(
    conn: sqlite3.Connection, replica_id: str, projects: Sequence[str]
) -> tuple[int, int, int, int]:
    """(entries, bytes, entries already held, bytes already held) of the replica's whole
    manifest for the account of `projects` (see _held), counted in one pass without a list."""
    found = conn.execute(
        "SELECT COUNT(*) AS entries, COALESCE(SUM(length), 0) AS bytes, "
        "COALESCE(SUM(held), 0) AS held, COALESCE(SUM(held * length), 0) AS held_bytes "
        f"FROM (SELECT m.length AS length, {_held(projects)} AS held "
        "FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash WHERE m.backup_id = ?)",
        (*projects, *projects, *WHOLE, replica_id),
    ).fetchone()
    return (
        int(found["entries"]),
        int(found["bytes"]),
        int(found["held"]),
        int(found["held_bytes"]),
    )


def lacking_and_total(conn: sqlite3.Connection, replica_id: str) -> tuple[int, int]:
    """(chunks the index lacks, bytes of the whole manifest) of a replica."""
    found = conn.execute(
        "SELECT COALESCE(SUM(c.hash IS NULL), 0) AS lacking, COALESCE(SUM(m.length), 0) AS total "
        "FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash WHERE m.backup_id = ?",
        (replica_id,),
    ).fetchone()
    return int(found["lacking"]), int(found["total"])


def complete(conn: sqlite3.Connection, replica_id: str, total: int, now: float) -> None:
    """Available: its manifest counts for its account from now on, so the arrivals go."""
    conn.execute(
        "UPDATE backups SET status = ?, bytes_read = ?, updated_at = ?, completed_at = ? "
        "WHERE backup_id = ?",
        (BackupStatus.AVAILABLE, total, now, now, replica_id),
    )
    conn.execute("DELETE FROM replica_arrivals WHERE replica_id = ?", (replica_id,))
