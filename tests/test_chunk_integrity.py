"""Stored chunks are verified every time they are read: a flipped byte in a pack file is an
error (DATA_LOSS), never wrong bytes on a restored disk. Domain test on a real store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from csbs.errors import ChunkCorrupted
from region_node.models import BackupStatus, ServerStatus
from region_node.service import RegionNodeService
from tests.node_helpers import MIB, seeded_bytes


@pytest.fixture
def service(node_service: RegionNodeService) -> RegionNodeService:
    return node_service


def _wait(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_corrupted_chunk_is_an_error_never_wrong_bytes_and_marks_its_backups(
    service: RegionNodeService, tmp_path: Path
) -> None:
    server = service.create_server("", "", 1, [4 * MIB], "", "")
    data = seeded_bytes(1, 2 * MIB)
    service.write_disk("", server.server_id, 0, [(0, data)])
    taken = service.create_backup("", server.server_id, "", "", [], "")
    _wait(lambda: service.get_backup("", taken.backup_id).status == BackupStatus.AVAILABLE)
    image = service.create_image("", taken.backup_id, "", "", "")

    (pack,) = (tmp_path / "node" / "chunks").glob("*.pack")
    with pack.open("r+b") as f:
        f.seek(MIB // 2)  # inside the first chunk's data
        byte = f.read(1)
        f.seek(MIB // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    parts = list(service.manifest(taken.backup_id))
    hashes = [e.hash for part in parts for e in part]
    with pytest.raises(ChunkCorrupted, match="does not match its hash"):
        list(service.read_chunks(hashes))
    # Found bad by a read: the backup that names the chunk no longer says it is whole.
    marked = service.get_backup("", taken.backup_id)
    assert marked.status == BackupStatus.ERROR
    assert hashes[0].hex() in marked.error_reason and "damaged" in marked.error_reason

    copy = service.create_server("", "", 0, [], image.image_id, "")
    _wait(lambda: service.get_server("", copy.server_id).status != ServerStatus.CREATING)
    broken = service.get_server("", copy.server_id)
    assert broken.status == ServerStatus.ERROR
    assert "missing from the store" in broken.error_reason

    # The bad copy left the index: the next backup of the same data stores it anew, whole.
    again = service.create_backup("", server.server_id, "", "", [], "")
    _wait(lambda: service.get_backup("", again.backup_id).status != BackupStatus.CREATING)
    assert service.get_backup("", again.backup_id).status == BackupStatus.AVAILABLE
    fresh = service.create_image("", again.backup_id, "", "", "")
    healed = service.create_server("", "", 0, [], fresh.image_id, "")
    _wait(lambda: service.get_server("", healed.server_id).status != ServerStatus.CREATING)
    assert service.get_server("", healed.server_id).status == ServerStatus.ACTIVE
    restored = b"".join(d for _, d in service.read_disk("", healed.server_id, 0, 0, 2 * MIB))
    assert restored == data
