"""Filling a server's disks from a backup: a restore (every chunk the backup does not hold
becomes zeros) or a new server from an image. The chunks to change are marked written first
(so the next backup reads them again), the disk is busy meanwhile (writes are refused), and
the server ends ACTIVE or ERROR (saying why), never left in between; a restore's backup stays
RESTORING, so undeletable, until then."""

from __future__ import annotations

import logging
import os
import threading

from csbs.errors import ChunkCorrupted
from region_node.catalog import backups as backup_rows
from region_node.catalog import manifests
from region_node.catalog import servers as server_rows
from region_node.engine.damage import chunk_damaged
from region_node.models import ServerStatus
from region_node.parts import NodeParts, Progress
from region_node.storage.chunk_store import ChunkLocation
from region_node.storage.disks import DiskState
from region_node.storage.fileio import drop_cache, out_of_space, write_all, zero_range

log = logging.getLogger(__name__)

FLUSH_EVERY_BYTES = 64 << 20
PREFETCH_CHUNKS = 16  # chunks read ahead while writing a backup onto disks
FILL_PAGE = 4096  # chunks looked up and written at a time


class FillEngine:
    def __init__(self, parts: NodeParts) -> None:
        self._parts = parts

    def start(self, server_id: str, backup_id: str, zero_first: bool) -> None:
        parts = self._parts
        progress = parts.progress[server_id] = Progress()
        with parts.catalog.read() as conn:
            progress.total = backup_rows.manifest_bytes(conn, backup_id)
        parts.jobs.submit(self._fill, server_id, backup_id, zero_first, progress)

    def _fill(self, server_id: str, backup_id: str, zero_first: bool, progress: Progress) -> None:
        parts = self._parts
        status, reason = ServerStatus.ERROR, "the work on the server was interrupted"
        try:
            with parts.catalog.read() as conn:
                pairs = backup_rows.onto_server(conn, backup_id, server_id, same_server=zero_first)
            for disk_index, disk_id in pairs:
                self._fill_disk(backup_id, disk_index, parts.disk(disk_id), zero_first, progress)
            status, reason = ServerStatus.ACTIVE, ""
        except Exception as exc:
            log.exception("writing backup %s onto server %s failed", backup_id, server_id)
            reason = f"{exc}"
            if out_of_space(exc):
                reason = (
                    f"region {parts.region_id} ran out of storage space while writing the "
                    "server's disks"
                )
            elif isinstance(exc, ChunkCorrupted) and exc.digest:
                chunk_damaged(parts, exc.digest, exc.message)
        finally:
            # The server's end state first, then the backup's: the backup stays RESTORING (and
            # so undeletable) until no work on its behalf is left.
            parts.settle(
                lambda: self._end_server(server_id, status, reason),
                f"ending the work on server {server_id}",
            )
            if zero_first:
                parts.settle(
                    lambda: self._end_restoring(backup_id), f"ending the restore of {backup_id}"
                )
                parts.notifier.changed(backup_id)
            parts.progress.pop(server_id, None)
            parts.notifier.changed(server_id)

    def _end_server(self, server_id: str, status: ServerStatus, reason: str) -> None:
        with self._parts.catalog.transaction() as conn:
            server_rows.set_status(conn, server_id, status, reason, "", self._parts.now())

    def _end_restoring(self, backup_id: str) -> None:
        with self._parts.catalog.transaction() as conn:
            backup_rows.end_restoring(conn, backup_id)

    def _fill_disk(
        self,
        backup_id: str,
        disk_index: int,
        disk: DiskState,
        zero_first: bool,
        progress: Progress,
    ) -> None:
        """Writes a backup's disk onto `disk`, a page of chunks at a time; a restore first
        zeroes the chunks the disk had written that the backup does not hold. Costs with the
        chunks written, never with the disk's size (issue 12: a sparse 8 TiB disk holding
        1 GiB restores as fast as a 1 GiB disk)."""
        parts = self._parts
        with parts.catalog.read() as conn:
            missing = backup_rows.chunks_of_disk_lacking(conn, backup_id, disk_index)
            lacking = backup_rows.first_chunk_lacking(conn, backup_id) if missing else b""
        if missing:
            raise ChunkCorrupted(
                f"backup {backup_id}: {missing} chunks of disk {disk_index} "
                "are missing from the store",
                lacking,
            )
        with disk.gate:
            disk.busy = "the server's disks are being written from a backup"
            # Marked before they change, so that the next backup reads them again.
            with parts.catalog.transaction() as conn:
                server_rows.mark_filled(conn, disk.disk_id, backup_id, disk_index, disk.epoch)
        try:
            with disk.io() as fd:
                if zero_first:
                    self._zero_what_the_backup_lacks(fd, backup_id, disk_index, disk)
                after = -1
                while True:
                    with parts.catalog.read() as conn:
                        page = [
                            (
                                r["chunk_index"],
                                r["hash"],
                                ChunkLocation(r["pack_id"], r["offset"], r["length"]),
                            )
                            for r in manifests.stored_of_disk(
                                conn, backup_id, disk_index, after, FILL_PAGE
                            )
                        ]
                    if not page:
                        break
                    self._write_page(fd, page, progress)
                    after = page[-1][0]
                os.fdatasync(fd)
                drop_cache(fd)
                parts.store.drop_read_cache()
        finally:
            with disk.gate:
                disk.busy = ""

    def _zero_what_the_backup_lacks(
        self, fd: int, backup_id: str, disk_index: int, disk: DiskState
    ) -> None:
        parts = self._parts
        cs = parts.chunk_size
        zeros = bytes(cs)
        after = -1
        while True:
            with parts.catalog.read() as conn:
                page = server_rows.written_not_in(
                    conn, disk.disk_id, backup_id, disk_index, after, FILL_PAGE
                )
            for i in page:
                if i < parts.chunks_in(disk.size_bytes):
                    zero_range(fd, i * cs, parts.chunk_length(disk.size_bytes, i), zeros)
            if len(page) < FILL_PAGE:
                return
            after = page[-1]

    def _write_page(
        self, fd: int, entries: list[tuple[int, bytes, ChunkLocation]], progress: Progress
    ) -> None:
        parts = self._parts
        cs = parts.chunk_size
        lock = threading.Lock()
        state = {"flushed": 0, "prefetched": 0}

        def write(position: int) -> None:
            chunk_index, digest, loc = entries[position]
            with lock:
                # Keep the kernel reading a window ahead of the writers.
                ahead = min(len(entries), position + PREFETCH_CHUNKS)
                start = max(state["prefetched"], position)
                state["prefetched"] = max(state["prefetched"], ahead)
            parts.store.prefetch(e[2] for e in entries[start:ahead])
            view = parts.store.read_at(digest, loc, parts.buffer())
            write_all(fd, view, chunk_index * cs)
            parts.store.forget_cached(loc)
            progress.add(len(view))
            with lock:
                state["flushed"] += len(view)
                due = state["flushed"] >= FLUSH_EVERY_BYTES
                if due:
                    state["flushed"] = 0
            if due:
                os.fdatasync(fd)
                drop_cache(fd)

        parts.parallel(range(len(entries)), write, threads=parts.config.workers * 2)
