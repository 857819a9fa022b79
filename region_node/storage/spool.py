"""A manifest on its way in, kept in an unnamed file of the node's data directory rather than in
memory (issue 12: a replica's manifest of 300,000 entries is 14 MB here, not 60 MB of objects),
then read back a batch at a time into the catalog's transaction. Every write is checked, so a
full disk is ENOSPC (RESOURCE_EXHAUSTED to the caller), never a manifest cut short."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from region_node.models import ManifestEntry
from region_node.storage.fileio import write_all

ENTRY = struct.Struct("<IQ32sI")  # disk_index, chunk_index, hash, length: 48 bytes
BUFFER_ENTRIES = 4096  # entries gathered in memory between two writes, and read back at once


class ManifestSpool:
    def __init__(self, directory: Path) -> None:
        self._fd, path = tempfile.mkstemp(prefix=".manifest-", dir=directory)
        os.unlink(path)  # unnamed: gone with the descriptor, even after kill -9
        self._buffer = bytearray()
        self._size = 0
        self.entries = 0
        self.bytes_named = 0  # the sum of the entries' lengths

    def __enter__(self) -> ManifestSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.close(self._fd)

    def add(self, entry: ManifestEntry) -> None:
        self._buffer += ENTRY.pack(entry.disk_index, entry.chunk_index, entry.hash, entry.length)
        self.entries += 1
        self.bytes_named += entry.length
        if len(self._buffer) >= BUFFER_ENTRIES * ENTRY.size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            write_all(self._fd, self._buffer, self._size)
            self._size += len(self._buffer)
            self._buffer = bytearray()

    def batches(self) -> Iterator[list[ManifestEntry]]:
        """Everything added, in order, at most BUFFER_ENTRIES a batch."""
        self._flush()
        step = BUFFER_ENTRIES * ENTRY.size
        for offset in range(0, self._size, step):
            data = os.pread(self._fd, min(step, self._size - offset), offset)
            if len(data) != min(step, self._size - offset):
                raise OSError(f"manifest spool: short read at {offset}")
            yield [ManifestEntry(*fields) for fields in ENTRY.iter_unpack(data)]
