"""Images: a named reference to a backup of the region (no bytes of their own)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from csbs.errors import ImageNotFound
from region_node.catalog import Row
from region_node.catalog.backups import disks
from region_node.models import Image, ServerStatus

IMAGE_COLUMNS = "image_id, project_id, name, description, backup_id, created_at"


def insert(
    conn: sqlite3.Connection,
    image_id: str,
    project_id: str,
    name: str,
    description: str,
    backup_id: str,
    seq: int,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO images(image_id, project_id, name, description, backup_id, created_at, "
        "seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (image_id, project_id, name, description, backup_id, now, seq),
    )


def row(conn: sqlite3.Connection, project_id: str, image_id: str) -> Row:
    found: Row | None = conn.execute(
        f"SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = ? AND project_id = ?",
        (image_id, project_id),
    ).fetchone()
    if found is None:
        raise ImageNotFound(image_id)
    return found


def to_image(conn: sqlite3.Connection, r: Row) -> Image:
    return Image(
        r["image_id"],
        r["project_id"],
        r["name"],
        r["description"],
        r["backup_id"],
        disks(conn, r["backup_id"]),
        datetime.fromtimestamp(r["created_at"], UTC),
    )


def backup_of(conn: sqlite3.Connection, image_id: str) -> str:
    """The backup an image refers to ('' if the image is gone)."""
    found = conn.execute("SELECT backup_id FROM images WHERE image_id = ?", (image_id,)).fetchone()
    return str(found["backup_id"]) if found else ""


def server_being_created(conn: sqlite3.Connection, image_id: str) -> str | None:
    found = conn.execute(
        "SELECT server_id FROM servers WHERE image_id = ? AND status = ?",
        (image_id, ServerStatus.CREATING),
    ).fetchone()
    return None if found is None else str(found["server_id"])


def delete(conn: sqlite3.Connection, image_id: str) -> None:
    conn.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
    conn.execute("DELETE FROM requests WHERE kind = 'image' AND resource_id = ?", (image_id,))
