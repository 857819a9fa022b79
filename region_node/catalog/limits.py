"""Capacity and quotas (issue 13): the values an operator set (the region's capacity in the
settings, a project's quotas in `project_quotas`), each with the config's value when it was
set, and what a project uses of its quotas."""

from __future__ import annotations

import sqlite3

CAPACITY = "operator_capacity_bytes"
CAPACITY_CONFIG = "operator_capacity_config_bytes"  # the config's value when it was set


def operator_capacity(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(the capacity an operator set, the config's capacity then), or None."""
    rows = dict(
        conn.execute(
            "SELECT key, value FROM settings WHERE key IN (?, ?)", (CAPACITY, CAPACITY_CONFIG)
        ).fetchall()
    )
    if CAPACITY not in rows or CAPACITY_CONFIG not in rows:
        return None
    return int(rows[CAPACITY]), int(rows[CAPACITY_CONFIG])


def set_operator_capacity(conn: sqlite3.Connection, capacity: int, config_capacity: int) -> None:
    conn.executemany(
        "INSERT INTO settings(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(CAPACITY, str(capacity)), (CAPACITY_CONFIG, str(config_capacity))],
    )


def drop_operator_capacity(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM settings WHERE key IN (?, ?)", (CAPACITY, CAPACITY_CONFIG))


def operator_quotas(conn: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    """Every quota an operator set: (project, type, quota, the config's quota then)."""
    rows = conn.execute("SELECT project_id, type, quota, config_quota FROM project_quotas")
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows.fetchall()]


def operator_quota(conn: sqlite3.Connection, project_id: str, quota_type: str) -> int | None:
    row = conn.execute(
        "SELECT quota FROM project_quotas WHERE project_id = ? AND type = ?",
        (project_id, quota_type),
    ).fetchone()
    return None if row is None else int(row[0])


def set_operator_quota(
    conn: sqlite3.Connection, project_id: str, quota_type: str, quota: int, config_quota: int
) -> None:
    conn.execute(
        "INSERT INTO project_quotas(project_id, type, quota, config_quota) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(project_id, type) DO UPDATE SET quota = excluded.quota, "
        "config_quota = excluded.config_quota",
        (project_id, quota_type, quota, config_quota),
    )


def drop_operator_quota(conn: sqlite3.Connection, project_id: str, quota_type: str) -> None:
    conn.execute(
        "DELETE FROM project_quotas WHERE project_id = ? AND type = ?", (project_id, quota_type)
    )


def usage(conn: sqlite3.Connection, project_id: str) -> tuple[int, int]:
    """(backups and replicas the project holds here in any status, the sum of their sizes in
    bytes: a backup's size is its disks' sizes). One index range of the project's backups."""
    count, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM((SELECT SUM(d.size_bytes) FROM backup_disks d "
        "WHERE d.backup_id = b.backup_id)), 0) FROM backups b WHERE b.project_id = ?",
        (project_id,),
    ).fetchone()
    return int(count), int(size)
