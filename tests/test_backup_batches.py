"""Issue 12: a running backup commits what it captured a batch at a time, so that its memory
(pins, pending records, captured entries) is bounded by the batch and not by the disk; and a
batch that cannot commit leaves nothing behind. Against the real domain (catalog, chunk store
and disk files in a temp dir), with the batch made small so that a small disk spans many."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest

from region_node.engine import backup as backup_engine
from region_node.models import BackupStatus, NewBackup, NewImage, NewServer, ServerStatus
from region_node.node import RegionNode
from tests.node_helpers import MIB, seeded_bytes, settled_backup

pytestmark = pytest.mark.timeout(120)

BATCH = 4
CHUNKS = 40  # 1 MiB chunks: ten batches


def _server_with_data(node: RegionNode, seed: int) -> tuple[str, bytes]:
    data = seeded_bytes(seed, CHUNKS * MIB)
    server = node.servers.create(
        NewServer("", name=f"s{seed}", server_type=1, disk_sizes=(CHUNKS * MIB,))
    )
    node.servers.write_disk(
        "", server.server_id, 0, [(i, data[i : i + 4 * MIB]) for i in range(0, len(data), 4 * MIB)]
    )
    return server.server_id, data


def _catalog_count(node: RegionNode, sql: str, *args: object) -> int:
    with node.parts.catalog.read() as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def test_a_backup_commits_in_batches_and_holds_at_most_a_few_batches_of_pins(
    node_service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = node_service
    monkeypatch.setattr(backup_engine, "COMMIT_EVERY", BATCH)
    server_id, data = _server_with_data(node, 1)
    store = node.parts.store
    most = {"pins": 0, "pending": 0}
    original_put = store.put

    def watched_put(digest: bytes, chunk: Any) -> int:
        stored = original_put(digest, chunk)
        with store._lock:
            most["pins"] = max(most["pins"], len(store._pins))
            most["pending"] = max(most["pending"], len(store._pending))
        return stored

    monkeypatch.setattr(store, "put", watched_put)
    done = settled_backup(node, node.backups.create(NewBackup("", server_id)).backup_id)
    assert done.status == BackupStatus.AVAILABLE, done.error_reason

    # Every reader may hold one batch being committed and one chunk of the next.
    bound = (node.parts.config.workers + 1) * BATCH
    assert 0 < most["pins"] <= bound, most
    assert 0 < most["pending"] <= bound, most
    with store._lock:
        assert not store._pins and not store._pending
    assert (
        _catalog_count(node, "SELECT COUNT(*) FROM manifest WHERE backup_id = ?", done.backup_id)
        == CHUNKS
    )

    image = node.images.create(NewImage("", done.backup_id))
    copy = node.servers.create(NewServer("", image_id=image.image_id))
    deadline = time.monotonic() + 60
    while node.servers.get("", copy.server_id).status == ServerStatus.CREATING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    read = b"".join(d for _, d in node.servers.read_disk("", copy.server_id, 0, 0, 0))
    assert read == data


def test_a_backup_whose_batch_cannot_commit_ends_in_error_and_keeps_nothing(
    node_service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third batch's transaction fails as on a full disk: the backup ends in ERROR naming
    the lack of space, its manifest (two committed batches) is dropped, every chunk it stored
    is given back, and no pin or pending record is left behind."""
    node = node_service
    monkeypatch.setattr(backup_engine, "COMMIT_EVERY", BATCH)
    server_id, _ = _server_with_data(node, 2)
    store = node.parts.store
    calls = {"n": 0}
    lock = threading.Lock()
    original_index = store.index

    def failing_index(conn: sqlite3.Connection, digests: Any) -> None:
        with lock:
            calls["n"] += 1
            if calls["n"] == 3:
                raise sqlite3.OperationalError("database or disk is full")
        original_index(conn, digests)

    monkeypatch.setattr(store, "index", failing_index)
    done = settled_backup(node, node.backups.create(NewBackup("", server_id)).backup_id)
    assert done.status == BackupStatus.ERROR
    assert "ran out of storage space" in done.error_reason
    assert (
        _catalog_count(node, "SELECT COUNT(*) FROM manifest WHERE backup_id = ?", done.backup_id)
        == 0
    )
    assert _catalog_count(node, "SELECT COUNT(*) FROM chunks") == 0
    with store._lock:
        assert not store._pins and not store._pending
