"""Issue 12: manifests in shared pages of 1,024 chunk positions (region_node.catalog.manifests).
An incremental backup lists its base's pages where nothing changed and makes new pages only
where something did, so its catalog rows and the work of deleting it grow with what changed;
every backup still restores on its own and deleting one never breaks another. Replicas of one
disk share their unchanged pages (content-addressed). Through the real gRPC surface of a real
cluster with 64 KiB chunks (a page covers 64 MiB), the catalog read beside the running node."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csbs.database import Database
from csbs.errors import FailedPrecondition
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from region_node.catalog import Catalog
from region_node.catalog.backups import fail_interrupted
from region_node.catalog.manifests import PAGE
from region_node.catalog.schema import MIGRATIONS
from region_node.engine.damage import chunk_damaged
from region_node.models import BackupStatus, NewBackup, NewServer
from region_node.node import RegionNode
from region_node.storage.chunk_store import chunk_hash
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import (
    all_servers,
    backup,
    disk_sha256,
    make_server,
    node,
    restore,
    seeded_bytes,
    server_from_backup,
    settled_backup,
    wait_until,
    write,
)
from tests.replication_helpers import replicated

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
CHUNK = 64 * 1024
PAGES = 4  # the disk spans four pages: 4 x 1,024 chunks of 64 KiB = 256 MiB
WRITTEN = 8  # chunks written at the start of each page

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path = write_cluster_config(tmp_path_factory.mktemp("pages"), chunk_size=CHUNK)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _catalog(cluster: Cluster, region: str) -> sqlite3.Connection:
    """The node's catalog, read-only beside the running node (WAL: it sees what committed)."""
    path = cluster.config.region(region).data_dir / "catalog.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _pages_of(cluster: Cluster, region: str, backup_id: str) -> dict[int, int]:
    with _catalog(cluster, region) as conn:
        return {
            r["page_no"]: r["page_id"]
            for r in conn.execute(
                "SELECT page_no, page_id FROM backup_pages WHERE backup_id = ?", (backup_id,)
            )
        }


def _count(cluster: Cluster, region: str, sql: str, *args: object) -> int:
    with _catalog(cluster, region) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def _drop_server_and_image(stub: Any, made: pb.Server) -> None:
    stub.DeleteServer(pb.DeleteServerRequest(server_id=made.server_id), timeout=30)
    wait_until(
        lambda: not any(s.server_id == made.server_id for s in all_servers(stub)),
        30,
        f"server {made.server_id} deleted",
    )
    stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id), timeout=30)


def _server_with_pages(stub: object, seed: int) -> tuple[str, bytes]:
    """A server whose disk has WRITTEN chunks at the start of each of its PAGES pages."""
    server = make_server(stub, [PAGES * PAGE * CHUNK >> 20])  # type: ignore[arg-type]
    data = seeded_bytes(seed, PAGES * WRITTEN * CHUNK)
    for page_no in range(PAGES):
        piece = data[page_no * WRITTEN * CHUNK : (page_no + 1) * WRITTEN * CHUNK]
        write(stub, server.server_id, 0, page_no * PAGE * CHUNK, piece)  # type: ignore[arg-type]
    return server.server_id, data


def test_an_incremental_backup_makes_pages_only_where_chunks_changed_and_each_stays_whole(
    small_chunks: Cluster,
) -> None:
    stub = node(small_chunks.channel(SOURCE))
    server_id, _ = _server_with_pages(stub, 21)
    first = backup(stub, server_id)
    first_sha = disk_sha256(stub, server_id, 0)
    first_pages = _pages_of(small_chunks, SOURCE, first.backup_id)
    assert sorted(first_pages) == list(range(PAGES))
    entries_before = _count(small_chunks, SOURCE, "SELECT COUNT(*) FROM page_entries")

    # One chunk of page 2 changes: the next backup shares pages 0, 1 and 3 with the first.
    write(stub, server_id, 0, (2 * PAGE + 3) * CHUNK, seeded_bytes(22, CHUNK))
    second = backup(stub, server_id)
    second_sha = disk_sha256(stub, server_id, 0)
    assert second_sha != first_sha
    second_pages = _pages_of(small_chunks, SOURCE, second.backup_id)
    assert sorted(second_pages) == list(range(PAGES))
    shared = [n for n in range(PAGES) if second_pages[n] == first_pages[n]]
    assert shared == [0, 1, 3]
    # Its catalog rows: one page of WRITTEN entries, not the disk's PAGES * WRITTEN.
    entries_after = _count(small_chunks, SOURCE, "SELECT COUNT(*) FROM page_entries")
    assert entries_after - entries_before == WRITTEN
    assert second.bytes_read == CHUNK  # it read only the chunk that changed

    # Every backup restores on its own, to its own bytes.
    restore(stub, first.backup_id)
    assert disk_sha256(stub, server_id, 0) == first_sha
    restore(stub, second.backup_id)
    assert disk_sha256(stub, server_id, 0) == second_sha

    # Deleting the first frees only the chunk the second no longer names (the old version of
    # chunk 3 of page 2), and its page 2 alone: the shared pages stay, the second stays whole.
    freed = stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=first.backup_id), timeout=30)
    assert freed.bytes_freed == CHUNK
    assert _count(small_chunks, SOURCE, "SELECT COUNT(*) FROM page_entries") == entries_before
    assert (
        _count(
            small_chunks,
            SOURCE,
            "SELECT COUNT(*) FROM manifest_pages WHERE page_id = ?",
            first_pages[2],
        )
        == 0
    )
    restore(stub, second.backup_id)
    assert disk_sha256(stub, server_id, 0) == second_sha
    made = server_from_backup(stub, second.backup_id)
    assert disk_sha256(stub, made.server_id, 0) == second_sha
    _drop_server_and_image(stub, made)

    # Deleting the last backup frees every chunk and page it named.
    freed = stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=second.backup_id), timeout=30)
    assert freed.bytes_freed == PAGES * WRITTEN * CHUNK
    for page_id in second_pages.values():
        assert (
            _count(
                small_chunks,
                SOURCE,
                "SELECT COUNT(*) FROM page_entries WHERE page_id = ?",
                page_id,
            )
            == 0
        )


def test_replicas_of_one_disk_share_their_unchanged_pages_and_stay_whole(
    small_chunks: Cluster,
) -> None:
    stub = node(small_chunks.channel(SOURCE))
    target = node(small_chunks.channel(TARGET))
    coordinator = CoordinatorStub(small_chunks.coordinator_channel())
    server_id, _ = _server_with_pages(stub, 31)
    first = backup(stub, server_id)
    first_sha = disk_sha256(stub, server_id, 0)
    write(stub, server_id, 0, (1 * PAGE + 5) * CHUNK, seeded_bytes(32, CHUNK))
    second = backup(stub, server_id)
    second_sha = disk_sha256(stub, server_id, 0)

    first_replica = replicated(coordinator, first.backup_id, SOURCE, TARGET).replica_id
    second_replica = replicated(coordinator, second.backup_id, SOURCE, TARGET).replica_id
    a = _pages_of(small_chunks, TARGET, first_replica)
    b = _pages_of(small_chunks, TARGET, second_replica)
    assert [n for n in range(PAGES) if a[n] == b[n]] == [0, 2, 3]

    # Each replica makes a server with its own backup's bytes; deleting the first replica
    # leaves the second whole.
    made = server_from_backup(target, first_replica)
    assert disk_sha256(target, made.server_id, 0) == first_sha
    _drop_server_and_image(target, made)
    freed = target.DeleteBackup(pb.DeleteBackupRequest(backup_id=first_replica), timeout=30)
    assert freed.bytes_freed == CHUNK  # the old version of chunk 5 of page 1
    made = server_from_backup(target, second_replica)
    assert disk_sha256(target, made.server_id, 0) == second_sha


def test_a_catalog_of_whole_manifests_migrates_to_pages_with_every_entry(tmp_path: Path) -> None:
    """Migration 6 turns the rows of an earlier catalog's manifest into pages, entry for entry."""
    path = tmp_path / "catalog.db"
    earlier = Database(path, {v: sql for v, sql in MIGRATIONS.items() if v <= 5}, "catalog")
    rows = [
        ("b1", 0, 0, b"a" * 32, 10),
        ("b1", 0, PAGE - 1, b"b" * 32, 11),
        ("b1", 0, PAGE, b"c" * 32, 12),
        ("b1", 2, 5 * PAGE + 7, b"d" * 32, 13),
        ("b2", 0, 0, b"a" * 32, 10),
    ]
    with earlier.transaction() as conn:
        conn.executemany(
            "INSERT INTO manifest(backup_id, disk_index, chunk_index, hash, length) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    del earlier
    catalog = Catalog(path)
    with catalog.read() as conn:
        got = [
            tuple(r)
            for r in conn.execute(
                "SELECT backup_id, disk_index, chunk_index, hash, length FROM manifest "
                "ORDER BY backup_id, disk_index, chunk_index"
            )
        ]
        pages = conn.execute("SELECT COUNT(*) FROM backup_pages").fetchone()[0]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == max(MIGRATIONS)
    assert got == rows
    assert pages == 4  # b1: disk 0 pages 0 and 1, disk 2 page 5; b2: disk 0 page 0


def test_a_chunk_of_a_shared_page_found_damaged_while_a_backup_runs_fails_that_backup(
    node_service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup being taken names the chunk through a page it shares with its base, so it is
    never AVAILABLE without it (engine.damage makes it ERROR, AVAILABLE does not overwrite)."""
    node = node_service
    mib = node.parts.chunk_size
    size = 2 * PAGE * mib  # two pages of 1 MiB chunks, sparse
    server = node.servers.create(NewServer("", name="s", server_type=1, disk_sizes=(size,)))
    shared_at = PAGE + 10  # on page 1, which the second backup shares with the first
    node.servers.write_disk(
        "",
        server.server_id,
        0,
        [(0, seeded_bytes(41, mib)), (shared_at * mib, seeded_bytes(42, mib))],
    )
    first = node.backups.create(NewBackup("", server.server_id)).backup_id
    assert settled_backup(node, first).status == BackupStatus.AVAILABLE
    node.servers.write_disk("", server.server_id, 0, [(0, seeded_bytes(43, mib))])

    reading = threading.Event()
    go_on = threading.Event()
    engine = node.backup_engine
    original = engine.read_chunk

    def slow_read(plan: Any, chunk_index: int) -> None:
        reading.set()
        assert go_on.wait(30)
        original(plan, chunk_index)

    monkeypatch.setattr(engine, "read_chunk", slow_read)
    second = node.backups.create(NewBackup("", server.server_id)).backup_id
    assert reading.wait(30)
    shared = chunk_hash(seeded_bytes(42, mib))
    chunk_damaged(node.parts, shared, "found by the test")
    assert node.backups.get("", second).status == BackupStatus.ERROR
    # ERROR, but its reads still hold chunks: a deletion now would leave them behind.
    with pytest.raises(FailedPrecondition, match="still stopping"):
        node.backups.delete("", second)
    go_on.set()

    done = settled_backup(node, second)
    assert done.status == BackupStatus.ERROR
    assert shared.hex() in done.error_reason
    assert node.backups.get("", first).status == BackupStatus.ERROR

    def pages_of_second() -> int:
        with node.parts.catalog.read() as conn:
            found = conn.execute(
                "SELECT COUNT(*) FROM backup_pages WHERE backup_id = ?", (second,)
            ).fetchone()
            return int(found[0])

    # ERROR from the moment the chunk was found damaged; its pages go once the backup's reads
    # have ended (the first backup's stay: it is ERROR but still listed).
    wait_until(lambda: pages_of_second() == 0, 30, "the failed backup's pages dropped")
    assert shared.hex() in node.backups.get("", second).error_reason
    wait_until(lambda: second not in node.parts.progress, 30, "the backup's engine ended")
    node.backups.delete("", second)


def test_at_start_a_backup_made_error_while_being_taken_loses_its_manifest(
    node_service: RegionNode,
) -> None:
    """If the node stops after a damaged chunk made a running backup ERROR but before its engine
    dropped its manifest, the next start drops it (a backup that completed keeps its own)."""
    node = node_service
    mib = node.parts.chunk_size
    server = node.servers.create(NewServer("", name="s", server_type=1, disk_sizes=(4 * mib,)))
    node.servers.write_disk("", server.server_id, 0, [(0, seeded_bytes(51, 2 * mib))])
    done = node.backups.create(NewBackup("", server.server_id)).backup_id
    assert settled_backup(node, done).status == BackupStatus.AVAILABLE
    node.servers.write_disk("", server.server_id, 0, [(2 * mib, seeded_bytes(52, mib))])
    stopped = node.backups.create(NewBackup("", server.server_id)).backup_id
    assert settled_backup(node, stopped).status == BackupStatus.AVAILABLE
    with node.parts.catalog.transaction() as conn:  # as a crash would leave them
        conn.execute(
            "UPDATE backups SET status = ?, completed_at = NULL WHERE backup_id = ?",
            (BackupStatus.ERROR, stopped),
        )
        conn.execute(
            "UPDATE backups SET status = ? WHERE backup_id = ?", (BackupStatus.ERROR, done)
        )
        fail_interrupted(conn, "stopped", node.parts.now())
        pages = {
            b: conn.execute(
                "SELECT COUNT(*) FROM backup_pages WHERE backup_id = ?", (b,)
            ).fetchone()[0]
            for b in (done, stopped)
        }
    assert pages == {done: 1, stopped: 0}
