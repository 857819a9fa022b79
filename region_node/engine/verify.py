"""VerifyBackup: every distinct chunk a backup names, read and checked against its hash (as
restic's `check --read-data` does), with progress. The chunks are pinned meanwhile, so that a
deletion running beside it cannot make a chunk look missing."""

from __future__ import annotations

from collections.abc import Iterator

from csbs.errors import ChunkCorrupted
from region_node.engine.damage import chunk_damaged, mark_unrestorable
from region_node.models import VerifyProgress
from region_node.parts import NodeParts

REPORT_EVERY_CHUNKS = 64


class Verifier:
    def __init__(self, parts: NodeParts) -> None:
        self._parts = parts

    def verify(self, backup_id: str, chunks: dict[bytes, int]) -> Iterator[VerifyProgress]:
        """Reads `chunks` (hash -> length, each once); the last report has `backup` unset: the
        caller adds the backup as it then is."""
        parts = self._parts
        total_bytes = sum(chunks.values())
        checked = checked_bytes = 0
        bad: list[bytes] = []
        buf = bytearray(parts.chunk_size)
        parts.store.pin(chunks)
        try:
            for digest, length in chunks.items():
                try:
                    parts.store.read(digest, buf)
                except ChunkCorrupted as exc:
                    bad.append(digest)
                    chunk_damaged(parts, digest, f"found by VerifyBackup: {exc.message}")
                checked += 1
                checked_bytes += length
                if checked % REPORT_EVERY_CHUNKS == 0:
                    yield VerifyProgress(len(chunks), checked, total_bytes, checked_bytes, len(bad))
        finally:
            parts.store.unpin(chunks)
            parts.store.drop_read_cache()  # a check streams; it keeps nothing cached
        if bad:
            mark_unrestorable(
                parts,
                backup_id,
                f"VerifyBackup: {len(bad)} of {len(chunks)} chunks are damaged or missing "
                f"(first: {bad[0].hex()}); this backup cannot be restored",
            )
        yield VerifyProgress(len(chunks), checked, total_bytes, checked_bytes, len(bad))
