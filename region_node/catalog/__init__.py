"""The node's catalog: one SQLite database (WAL) holding servers, disks, written-chunk epochs,
backups and their manifests, the chunk index, images, replication records and holds.

All the node's SQL lives in this package, one module per resource; rows are read by column
name. One connection guarded by one lock (see region_node.node for the lock order); every
logical step is one transaction, opened by the caller and handed to these functions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from csbs.database import Database
from region_node.catalog.schema import MIGRATIONS

Row = sqlite3.Row


class Catalog(Database):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS, "catalog")
        self._conn.row_factory = sqlite3.Row


def page(
    conn: sqlite3.Connection,
    table: str,
    columns: str,
    filters: dict[str, object],
    after: int,
    limit: int,
) -> list[Row]:
    """The one paged select: rows of `table` matching every `filters` column (empty values are
    no filter), in creation order after sequence `after`, at most `limit` + 1 (one more tells
    that there is a next page). Column and table names come from this package, never input."""
    where = ["seq > ?"]
    args: list[object] = [after]
    for column, value in filters.items():
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    return conn.execute(
        f"SELECT {columns}, seq FROM {table} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
