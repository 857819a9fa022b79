"""What the node does with a chunk found damaged or missing by any read (a restore, a server
made from an image, a replication reading it, a verification): every backup that names it and
said it was whole becomes ERROR, saying why, so that GetBackup never shows AVAILABLE for a
backup that cannot be restored (a backup still being taken too: it would name the chunk, through
a page it shares with its base or one it read, and never becomes AVAILABLE once ERROR); and the
chunk leaves the index, so that the next backup of the same data stores it anew instead of
naming the bad copy."""

from __future__ import annotations

from region_node.catalog import backups as backup_rows
from region_node.catalog import manifests
from region_node.models import BackupStatus
from region_node.parts import NodeParts
from region_node.storage.chunk_store import ChunkLocation


def chunk_damaged(parts: NodeParts, digest: bytes, found: str) -> None:
    names: list[str] = []
    locations: list[ChunkLocation] = []

    def mark() -> None:
        with parts.catalog.transaction() as conn:
            names[:] = manifests.backups_naming(conn, digest)
            backup_rows.mark_error(
                conn,
                names,
                f"chunk {digest.hex()} of this backup is damaged or missing ({found})",
                parts.now(),
                only=(*backup_rows.WHOLE, BackupStatus.CREATING),
            )
            locations[:] = parts.store.unindex(conn, [digest])

    parts.settle(mark, f"marking chunk {digest.hex()} damaged")
    parts.store.release(locations)
    for backup_id in names:
        parts.notifier.changed(backup_id)


def mark_unrestorable(parts: NodeParts, backup_id: str, reason: str) -> None:
    """A backup found to lack chunks: ERROR with `reason` (unless it is still being taken)."""

    def mark() -> None:
        with parts.catalog.transaction() as conn:
            backup_rows.mark_error(
                conn,
                [backup_id],
                reason,
                parts.now(),
                only=tuple(s for s in BackupStatus if s != BackupStatus.CREATING),
            )

    parts.settle(mark, f"marking backup {backup_id} unrestorable")
    parts.notifier.changed(backup_id)
