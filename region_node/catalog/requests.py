"""Idempotency: a create retried with the same request ID in the same project returns the
resource the first call made."""

from __future__ import annotations

import sqlite3


def resource_of(
    conn: sqlite3.Connection, kind: str, project_id: str, request_id: str
) -> str | None:
    if not request_id:
        return None
    found = conn.execute(
        "SELECT resource_id FROM requests WHERE kind = ? AND project_id = ? AND request_id = ?",
        (kind, project_id, request_id),
    ).fetchone()
    return None if found is None else str(found["resource_id"])


def remember(
    conn: sqlite3.Connection, kind: str, project_id: str, request_id: str, resource_id: str
) -> None:
    if request_id:
        conn.execute(
            "INSERT INTO requests(kind, project_id, request_id, resource_id) VALUES (?, ?, ?, ?)",
            (kind, project_id, request_id, resource_id),
        )
