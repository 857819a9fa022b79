"""Manifests in shared pages (issue 12). A backup's disk is a list of pages (`backup_pages`), each
page the entries (slot, hash, length) of PAGE chunk positions (`page_entries`); see migration 6.

- An incremental backup lists its base's pages where nothing was written since the base, and
  makes a page of its own for each page where something was: a copy of the base's entries but
  those it reads again, filled as its batches commit. Its rows, the time to take it and the time
  to delete it grow with the pages that changed, not with the disk or the history.
- A page of a backup is changed only by the backup that made it, while it is being taken; once
  listed by a second backup it never changes again.
- A replica's pages are content-addressed: a page with the same entries as one already stored is
  listed, not copied, so the replicas of one disk share their unchanged pages as well.
- A page lives while some backup lists it; its entries keep their chunks alive. Deleting a
  backup frees only the pages no other backup lists, and returns the hashes those named."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence

from region_node.catalog import Row
from region_node.models import ManifestEntry

PAGE = 1024  # chunk positions of a page; fixed by migration 6 (the view `manifest` uses it)


def _new_page(conn: sqlite3.Connection, digest: bytes | None = None) -> int:
    cursor = conn.execute("INSERT INTO manifest_pages(digest) VALUES (?)", (digest,))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _list(conn: sqlite3.Connection, rows: Iterable[tuple[str, int, int, int]]) -> None:
    """(backup_id, disk_index, page_no, page_id): pages a backup lists."""
    conn.executemany(
        "INSERT INTO backup_pages(backup_id, disk_index, page_no, page_id) VALUES (?, ?, ?, ?)",
        rows,
    )


# -- a backup being taken --------------------------------------------------------------------
def begin_disk(
    conn: sqlite3.Connection,
    backup_id: str,
    disk_index: int,
    base: Row | None,
    todo: Sequence[int],
) -> None:
    """The pages of a disk of a backup being taken: its base's (backup_id, disk_index) pages
    where no chunk is in `todo` (the chunks it reads itself), and a page of its own wherever
    one is, holding the base's entries but those in `todo`. In the backup's start transaction,
    so that the shared pages keep their chunks alive from then on."""
    changed: dict[int, list[int]] = {}
    for chunk_index in todo:
        changed.setdefault(chunk_index // PAGE, []).append(chunk_index % PAGE)
    base_pages: dict[int, int] = {}
    if base is not None:
        base_pages = {
            r["page_no"]: r["page_id"]
            for r in conn.execute(
                "SELECT page_no, page_id FROM backup_pages WHERE backup_id = ? AND disk_index = ?",
                (base["backup_id"], base["disk_index"]),
            )
        }
    _list(
        conn,
        (
            (backup_id, disk_index, page_no, page_id)
            for page_no, page_id in base_pages.items()
            if page_no not in changed
        ),
    )
    for page_no, slots in changed.items():
        page_id = _new_page(conn)
        _list(conn, [(backup_id, disk_index, page_no, page_id)])
        if page_no in base_pages:
            marks = ", ".join("?" * len(slots))
            conn.execute(
                "INSERT INTO page_entries(page_id, slot, hash, length) "
                "SELECT ?, slot, hash, length FROM page_entries "
                f"WHERE page_id = ? AND slot NOT IN ({marks})",
                (page_id, base_pages[page_no], *slots),
            )


def add_entries(conn: sqlite3.Connection, backup_id: str, entries: Iterable[ManifestEntry]) -> None:
    """Entries a backup being taken read, into its own pages (made when it began): never into a
    page another backup lists or a replica's (the count check below would fail loudly)."""
    rows = [
        (e.chunk_index % PAGE, e.hash, e.length, backup_id, e.disk_index, e.chunk_index // PAGE)
        for e in entries
    ]
    before = conn.total_changes
    conn.executemany(
        "INSERT OR REPLACE INTO page_entries(page_id, slot, hash, length) "
        "SELECT page_id, ?, ?, ? FROM backup_pages "
        "WHERE backup_id = ? AND disk_index = ? AND page_no = ? AND NOT EXISTS (SELECT 1 FROM "
        "backup_pages o INDEXED BY backup_pages_by_page WHERE o.page_id = backup_pages.page_id "
        "AND o.backup_id != backup_pages.backup_id) AND EXISTS (SELECT 1 FROM manifest_pages p "
        "WHERE p.page_id = backup_pages.page_id AND p.digest IS NULL)",
        rows,
    )
    written = conn.total_changes - before
    if written != len(rows):  # a read chunk whose page was never made: never lose it silently
        raise RuntimeError(
            f"backup {backup_id}: {len(rows) - written} of {len(rows)} entries have no page "
            "of their own"
        )


# -- a replica -------------------------------------------------------------------------------
def _page_digest(entries: Sequence[ManifestEntry]) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for e in entries:
        h.update(b"%d:%d:" % (e.chunk_index % PAGE, e.length))
        h.update(e.hash)
    return h.digest()


def add_replica_pages(
    conn: sqlite3.Connection, replica_id: str, entries: Iterable[ManifestEntry]
) -> None:
    """A replica's whole manifest, given in order (disk_index, then chunk_index), as pages: one
    already stored with the same entries is listed, a new one is added (content-addressed)."""
    for (disk_index, page_no), page in _by_page(entries):
        digest = _page_digest(page)
        found = conn.execute(
            "SELECT page_id FROM manifest_pages WHERE digest = ?", (digest,)
        ).fetchone()
        if found is not None:
            _list(conn, [(replica_id, disk_index, page_no, found["page_id"])])
            continue
        page_id = _new_page(conn, digest)
        _list(conn, [(replica_id, disk_index, page_no, page_id)])
        conn.executemany(
            "INSERT INTO page_entries(page_id, slot, hash, length) VALUES (?, ?, ?, ?)",
            [(page_id, e.chunk_index % PAGE, e.hash, e.length) for e in page],
        )


def _by_page(
    entries: Iterable[ManifestEntry],
) -> Iterator[tuple[tuple[int, int], list[ManifestEntry]]]:
    key: tuple[int, int] | None = None
    page: list[ManifestEntry] = []
    for e in entries:
        at = (e.disk_index, e.chunk_index // PAGE)
        if at != key and page:
            assert key is not None
            yield key, page
            page = []
        key = at
        page.append(e)
    if page:
        assert key is not None
        yield key, page


# -- deleting --------------------------------------------------------------------------------
def drop(conn: sqlite3.Connection, backup_id: str, on_freed: Callable[[list[bytes]], None]) -> None:
    """Removes a backup's page list, and the pages no other backup lists, one at a time: after
    each, `on_freed` gets the hashes it named (what may be free now). A page still listed
    elsewhere frees nothing. Memory: one page's hashes, whatever the backup's size."""
    page_ids = [
        r["page_id"]
        for r in conn.execute("SELECT page_id FROM backup_pages WHERE backup_id = ?", (backup_id,))
    ]
    conn.execute("DELETE FROM backup_pages WHERE backup_id = ?", (backup_id,))
    for page_id in sorted(set(page_ids)):
        if conn.execute(
            "SELECT 1 FROM backup_pages INDEXED BY backup_pages_by_page WHERE page_id = ? LIMIT 1",
            (page_id,),
        ).fetchone():
            continue
        hashes = [
            r["hash"]
            for r in conn.execute("SELECT hash FROM page_entries WHERE page_id = ?", (page_id,))
        ]
        conn.execute("DELETE FROM page_entries WHERE page_id = ?", (page_id,))
        conn.execute("DELETE FROM manifest_pages WHERE page_id = ?", (page_id,))
        on_freed(hashes)


# -- reading in order ------------------------------------------------------------------------
def entries_after(
    conn: sqlite3.Connection, backup_id: str, after: tuple[int, int] | None, limit: int
) -> list[ManifestEntry]:
    """At most `limit` entries of a backup's manifest after position `after` (disk_index,
    chunk_index), in order: a seek to the page of `after`, whatever the manifest's size."""
    disk, chunk = after if after is not None else (-1, -1)
    return [
        ManifestEntry(r["disk_index"], r["chunk_index"], r["hash"], r["length"])
        for r in conn.execute(
            f"SELECT bp.disk_index, bp.page_no * {PAGE} + e.slot AS chunk_index, e.hash, "
            "e.length FROM backup_pages bp CROSS JOIN page_entries e ON e.page_id = bp.page_id "
            "WHERE bp.backup_id = ? AND (bp.disk_index, bp.page_no) >= (?, ?) "
            f"AND (bp.disk_index, bp.page_no * {PAGE} + e.slot) > (?, ?) "
            "ORDER BY bp.disk_index, bp.page_no, e.slot LIMIT ?",
            (backup_id, disk, (chunk + 1) // PAGE, disk, chunk, limit),
        )
    ]


def stored_of_disk(
    conn: sqlite3.Connection, backup_id: str, disk_index: int, after: int, limit: int
) -> list[Row]:
    """(chunk_index, hash, pack_id, offset, length) of the chunks of a backup's disk that the
    chunk index holds, in order, after chunk `after`, at most `limit`."""
    return conn.execute(
        f"SELECT bp.page_no * {PAGE} + e.slot AS chunk_index, e.hash, c.pack_id, c.offset, "
        "c.length FROM backup_pages bp CROSS JOIN page_entries e ON e.page_id = bp.page_id "
        "JOIN chunks c ON c.hash = e.hash "
        "WHERE bp.backup_id = ? AND bp.disk_index = ? AND bp.page_no >= ? "
        f"AND bp.page_no * {PAGE} + e.slot > ? ORDER BY bp.page_no, e.slot LIMIT ?",
        (backup_id, disk_index, (after + 1) // PAGE, after, limit),
    ).fetchall()


# -- by hash ---------------------------------------------------------------------------------
def backups_naming(conn: sqlite3.Connection, digest: bytes) -> list[str]:
    """Every backup whose manifest names the chunk."""
    return [
        r["backup_id"]
        for r in conn.execute(
            "SELECT DISTINCT bp.backup_id FROM page_entries e INDEXED BY page_entries_by_hash "
            "CROSS JOIN backup_pages bp INDEXED BY backup_pages_by_page "
            "ON bp.page_id = e.page_id WHERE e.hash = ?",
            (digest,),
        )
    ]
