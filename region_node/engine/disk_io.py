"""Writes and reads of a server's disk files. A write holds the disk's gate while it durably
marks its chunks as written in the current epoch (so the next incremental backup reads them),
preserves the chunks a running backup has not read yet (copy-on-write: the backup keeps its
point in time), and writes every byte or raises."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from csbs.errors import FailedPrecondition, InvalidArgument
from region_node.catalog import servers as server_rows
from region_node.parts import NodeParts
from region_node.storage.disks import STRIPES, BackupSession, DiskState
from region_node.storage.fileio import write_all

log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_WRITE_BYTES = 4 * MIB
READ_PIECE_BYTES = MIB


class DiskIO:
    def __init__(self, parts: NodeParts) -> None:
        self._parts = parts
        self._cs = parts.chunk_size

    def write(self, disk: DiskState, offset: int, data: bytes) -> None:
        length = len(data)
        if length > MAX_WRITE_BYTES:
            raise InvalidArgument(f"data: {length} bytes in one message, at most {MAX_WRITE_BYTES}")
        if offset < 0 or offset + length > disk.size_bytes:
            raise InvalidArgument(
                f"offset {offset} + {length} bytes passes the end of the disk "
                f"({disk.size_bytes} bytes)"
            )
        if not length:
            return
        first, last = offset // self._cs, (offset + length - 1) // self._cs
        with disk.gate:
            if disk.busy:
                raise FailedPrecondition(f"disk {disk.disk_id}: {disk.busy}")
            new = [i for i in range(first, last + 1) if i not in disk.marked]
            if new:
                with self._parts.catalog.transaction() as conn:
                    server_rows.mark_written(conn, disk.disk_id, new, disk.epoch)
                disk.marked.update(new)
            session = disk.session
            if session is not None:
                for i in range(first, last + 1):
                    self._preserve(disk, session, i)
            with disk.io() as fd:
                write_all(fd, data, offset)

    def _preserve(self, disk: DiskState, session: BackupSession, chunk_index: int) -> None:
        """Copy-on-write: a chunk the running backup has not read yet is read now, before the
        write that would change it."""
        with session.locks[chunk_index % STRIPES]:
            if chunk_index not in session.todo:
                return
            session.todo.discard(chunk_index)
            session.capturing()  # the backup commits only once this capture has ended
        try:
            length = self._parts.chunk_length(disk.size_bytes, chunk_index)
            buf = bytearray(length)
            with disk.io() as fd:
                os.preadv(fd, [buf], chunk_index * self._cs)
            session.capture(chunk_index, memoryview(buf))
        except Exception as exc:
            # The write goes on; the backup that lost this chunk ends in error.
            log.warning("backup copy-on-write of chunk %d failed: %s", chunk_index, exc)
            session.failure = exc
        finally:
            session.captured()

    def read(self, disk: DiskState, offset: int, length: int) -> Iterator[tuple[int, bytes]]:
        end = offset + length
        while offset < end:
            n = min(READ_PIECE_BYTES, end - offset)
            with disk.io() as fd:
                data = os.pread(fd, n, offset)
            yield offset, data
            offset += n
