"""Issue 12: a restore costs with the chunks written, never with the disk's size. On an 8 TiB
sparse disk holding a few MiB, a restore zeroes exactly the chunks written since the backup
that the backup does not hold (a chunk never written is a hole already) and writes the
backup's chunks; the disk then reads as it was at the backup. Against the real domain."""

from __future__ import annotations

import time
from typing import Any

import pytest

from region_node.engine import fill as fill_engine
from region_node.models import BackupStatus, NewBackup, NewServer, ServerStatus
from region_node.node import RegionNode
from region_node.storage import fileio
from tests.node_helpers import MIB, seeded_bytes

pytestmark = pytest.mark.timeout(120)

TIB = 1 << 40
SIZE = 8 * TIB


def _until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _read(node: RegionNode, server_id: str, offset: int, length: int) -> bytes:
    return b"".join(d for _, d in node.servers.read_disk("", server_id, 0, offset, length))


def test_a_restore_of_an_8_tib_sparse_disk_zeroes_only_what_was_written_since(
    node_service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = node_service
    server = node.servers.create(NewServer("", name="big", server_type=1, disk_sizes=(SIZE,)))
    sid = server.server_id
    first, far = seeded_bytes(1, 4 * MIB), seeded_bytes(2, 4 * MIB)
    node.servers.write_disk("", sid, 0, [(0, first), (4 * TIB, far)])
    taken = node.backups.create(NewBackup("", sid))
    _until(lambda: node.backups.get("", taken.backup_id).status != BackupStatus.CREATING)
    assert node.backups.get("", taken.backup_id).status == BackupStatus.AVAILABLE

    later = seeded_bytes(3, 3 * MIB)
    node.servers.write_disk("", sid, 0, [(2 * TIB, later), (4 * TIB, later)])

    zeroed: list[int] = []
    original = fileio.zero_range

    def counted(fd: int, offset: int, length: int, zeros: bytes) -> None:
        zeroed.append(offset)
        original(fd, offset, length, zeros)

    monkeypatch.setattr(fill_engine, "zero_range", counted)
    node.backups.restore("", taken.backup_id)
    _until(lambda: node.servers.get("", sid).status != ServerStatus.RESTORING)
    assert node.servers.get("", sid).status == ServerStatus.ACTIVE

    # Only the three chunks written at 2 TiB after the backup are zeroed; those at 4 TiB are
    # the backup's and written over.
    assert sorted(zeroed) == [2 * TIB + i * MIB for i in range(3)]
    assert _read(node, sid, 0, 4 * MIB) == first
    assert _read(node, sid, 4 * TIB, 4 * MIB) == far
    assert _read(node, sid, 2 * TIB, 3 * MIB) == bytes(3 * MIB)

    # The next backup reads again what the restore changed, and holds the restored data.
    again = node.backups.create(NewBackup("", sid))
    _until(lambda: node.backups.get("", again.backup_id).status != BackupStatus.CREATING)
    done = node.backups.get("", again.backup_id)
    assert done.status == BackupStatus.AVAILABLE
    assert done.bytes_to_read == 11 * MIB  # 4 + 4 chunks rewritten, 3 zeroed
