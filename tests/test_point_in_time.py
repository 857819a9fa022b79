"""Point in time: writes that arrive while a backup is being taken are not in it, and are not
lost. A domain test against the real catalog and stores in a temp dir, with the backup's
readers held on purpose so that the writes surely land mid-backup."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from region_node.models import BackupStatus, NewBackup, NewImage, NewServer, ServerStatus
from region_node.node import RegionNode
from tests.node_helpers import MIB, seeded_bytes


@pytest.fixture
def service(node_service: RegionNode) -> RegionNode:
    return node_service


def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _read_all(node: RegionNode, server_id: str) -> bytes:
    return b"".join(data for _, data in node.servers.read_disk("", server_id, 0, 0, 0))


def test_writes_during_a_backup_are_not_in_it_and_not_lost(
    service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = service.servers.create(
        NewServer("", name="pit", server_type=1, disk_sizes=(16 * MIB,))
    )
    before = seeded_bytes(1, 16 * MIB)
    service.servers.write_disk(
        "", server.server_id, 0, [(o, before[o : o + 4 * MIB]) for o in range(0, 16 * MIB, 4 * MIB)]
    )

    release = threading.Event()
    original = service.backup_engine.read_chunk

    def held_read(plan: object, chunk_index: int) -> None:
        assert release.wait(30)
        original(plan, chunk_index)  # type: ignore[arg-type]

    monkeypatch.setattr(service.backup_engine, "read_chunk", held_read)
    started = service.backups.create(NewBackup("", server.server_id))
    assert started.status == BackupStatus.CREATING

    during = seeded_bytes(2, 3 * MIB + 100)
    service.servers.write_disk("", server.server_id, 0, [(5 * MIB - 50, during)])
    after = bytearray(before)
    after[5 * MIB - 50 : 5 * MIB - 50 + len(during)] = during
    release.set()

    _until(lambda: service.backups.get("", started.backup_id).status != BackupStatus.CREATING)
    taken = service.backups.get("", started.backup_id)
    assert taken.status == BackupStatus.AVAILABLE, taken.error_reason
    assert _read_all(service, server.server_id) == bytes(after)

    image = service.images.create(NewImage("", taken.backup_id))
    copy = service.servers.create(NewServer("", image_id=image.image_id))
    _until(lambda: service.servers.get("", copy.server_id).status == ServerStatus.ACTIVE)
    assert _read_all(service, copy.server_id) == before

    # The writes made during the first backup are picked up by the next one.
    monkeypatch.setattr(service.backup_engine, "read_chunk", original)
    second = service.backups.create(NewBackup("", server.server_id))
    _until(lambda: service.backups.get("", second.backup_id).status != BackupStatus.CREATING)
    # The write spans chunks 4 to 8.
    assert service.backups.get("", second.backup_id).bytes_read == 5 * MIB
    image2 = service.images.create(NewImage("", second.backup_id))
    copy2 = service.servers.create(NewServer("", image_id=image2.image_id))
    _until(lambda: service.servers.get("", copy2.server_id).status == ServerStatus.ACTIVE)
    assert _read_all(service, copy2.server_id) == bytes(after)
