"""Stored chunks are verified every time they are read: a flipped byte in a pack file is an
error (DATA_LOSS), never wrong bytes on a restored disk. Domain test on a real store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from csbs.errors import ChunkCorrupted
from region_node.models import BackupStatus, NewBackup, NewImage, NewServer, ServerStatus
from region_node.node import RegionNode
from tests.node_helpers import MIB, seeded_bytes


@pytest.fixture
def service(node_service: RegionNode) -> RegionNode:
    return node_service


def _wait(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_corrupted_chunk_is_an_error_never_wrong_bytes_and_marks_its_backups(
    service: RegionNode, tmp_path: Path
) -> None:
    server = service.servers.create(NewServer("", server_type=1, disk_sizes=(4 * MIB,)))
    data = seeded_bytes(1, 2 * MIB)
    service.servers.write_disk("", server.server_id, 0, [(0, data)])
    taken = service.backups.create(NewBackup("", server.server_id))
    _wait(lambda: service.backups.get("", taken.backup_id).status == BackupStatus.AVAILABLE)
    image = service.images.create(NewImage("", taken.backup_id))

    (pack,) = (tmp_path / "node" / "chunks").glob("*.pack")
    with pack.open("r+b") as f:
        f.seek(MIB // 2)  # inside the first chunk's data
        byte = f.read(1)
        f.seek(MIB // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    parts = list(service.replicas.manifest(taken.backup_id))
    hashes = [e.hash for part in parts for e in part]
    with pytest.raises(ChunkCorrupted, match="does not match its hash"):
        list(service.replicas.read_chunks(hashes))
    # Found bad by a read: the backup that names the chunk no longer says it is whole.
    marked = service.backups.get("", taken.backup_id)
    assert marked.status == BackupStatus.ERROR
    # (which chunk is first in the pack depends on which reader thread stored it first)
    assert "damaged" in marked.error_reason
    assert any(f"chunk {h.hex()} of this backup" in marked.error_reason for h in hashes)

    copy = service.servers.create(NewServer("", image_id=image.image_id))
    _wait(lambda: service.servers.get("", copy.server_id).status != ServerStatus.CREATING)
    broken = service.servers.get("", copy.server_id)
    assert broken.status == ServerStatus.ERROR
    assert "missing from the store" in broken.error_reason

    # The bad copy left the index: the next backup of the same data stores it anew, whole.
    again = service.backups.create(NewBackup("", server.server_id))
    _wait(lambda: service.backups.get("", again.backup_id).status != BackupStatus.CREATING)
    assert service.backups.get("", again.backup_id).status == BackupStatus.AVAILABLE
    fresh = service.images.create(NewImage("", again.backup_id))
    healed = service.servers.create(NewServer("", image_id=fresh.image_id))
    _wait(lambda: service.servers.get("", healed.server_id).status != ServerStatus.CREATING)
    assert service.servers.get("", healed.server_id).status == ServerStatus.ACTIVE
    restored = b"".join(
        d for _, d in service.servers.read_disk("", healed.server_id, 0, 0, 2 * MIB)
    )
    assert restored == data
