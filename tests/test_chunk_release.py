"""Issue 12: deleting a backup costs with its runs of records, not with its chunks: chunks it
alone named are unindexed a batch at a time, and records that lie end to end in a pack (a
backup's chunks were written one after the other) are given back with one hole each run.
Domain test on a real catalog and chunk store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from region_node.models import BackupStatus, NewBackup, NewServer
from region_node.node import RegionNode
from region_node.storage import chunk_store, fileio
from tests.node_helpers import MIB, allocated_bytes, seeded_bytes

CHUNKS = 24


def _backup(node: RegionNode, seed: int) -> str:
    server = node.servers.create(
        NewServer("", name=f"s{seed}", server_type=1, disk_sizes=(CHUNKS * MIB,))
    )
    data = seeded_bytes(seed, CHUNKS * MIB)
    node.servers.write_disk(
        "", server.server_id, 0, [(i, data[i : i + 4 * MIB]) for i in range(0, len(data), 4 * MIB)]
    )
    taken = node.backups.create(NewBackup("", server.server_id))
    deadline = time.monotonic() + 60
    while node.backups.get("", taken.backup_id).status == BackupStatus.CREATING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert node.backups.get("", taken.backup_id).status == BackupStatus.AVAILABLE
    return taken.backup_id


def test_deleting_a_backup_punches_one_hole_per_run_of_records_and_frees_them_all(
    node_service: RegionNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = node_service
    first = _backup(node, 1)
    kept = _backup(node, 2)
    chunks_dir = tmp_path / "node" / "chunks"
    before = allocated_bytes(chunks_dir)

    punched: list[tuple[int, int]] = []
    original = fileio.punch_hole

    def counted(fd: int, offset: int, length: int) -> bool:
        punched.append((offset, length))
        return original(fd, offset, length)

    monkeypatch.setattr("region_node.storage.chunk_store.punch_hole", counted)
    freed = node.backups.delete("", first)

    assert freed == CHUNKS * MIB
    assert len(punched) == 1, punched  # its 24 records lie end to end
    assert punched[0][1] == CHUNKS * (MIB + chunk_store.RECORD_HEADER.size)
    # Whole blocks only: the partial blocks at both ends of the run stay.
    assert before - allocated_bytes(chunks_dir) >= CHUNKS * MIB - 2 * 4096
    with node.parts.catalog.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == CHUNKS
    assert node.backups.get("", kept).status == BackupStatus.AVAILABLE
