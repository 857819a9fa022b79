"""Issue 10, "nothing lost": each problem seen on the region node, reproduced deterministically
against the real domain (catalog, chunk store and disk files in a temp dir), with the work held
at the exact moment that used to break. Disk-full cases, which need a real small filesystem,
are in test_disk_full.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csbs.clock import WallClock
from csbs.config import ProjectConfig
from csbs.errors import FailedPrecondition
from region_node.catalog import Catalog
from region_node.config import NodeConfig
from region_node.engine.fill import FillEngine
from region_node.models import BackupStatus, NewBackup, NewImage, NewServer, ServerStatus
from region_node.node import ChunkSizeMismatch, RegionNode
from region_node.storage import fileio
from region_node.storage.chunk_store import PACK_HEADER, PACK_MAGIC, PACK_VERSION, ChunkStore
from region_node.storage.disks import DiskGone
from tests.node_helpers import MIB, seeded_bytes

pytestmark = pytest.mark.timeout(120)


def _config(data_dir: Path, chunk_size: int = MIB) -> NodeConfig:
    return NodeConfig(
        region_id="cn-north-4",
        display_name="CN North-Beijing4",
        listen="127.0.0.1:0",
        accepts_replication=True,
        projects=(ProjectConfig("p1", "p1", "default", True),),
        data_dir=data_dir,
        chunk_size=chunk_size,
    )


def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _settled_backup(node: RegionNode, backup_id: str) -> BackupStatus:
    _until(lambda: node.backups.get("", backup_id).status != BackupStatus.CREATING)
    return node.backups.get("", backup_id).status


def _read_all(node: RegionNode, server_id: str, disk_index: int = 0) -> bytes:
    return b"".join(data for _, data in node.servers.read_disk("", server_id, disk_index, 0, 0))


def _server_from(node: RegionNode, backup_id: str) -> str:
    image = node.images.create(NewImage("", backup_id))
    server = node.servers.create(NewServer("", image_id=image.image_id))
    _until(lambda: node.servers.get("", server.server_id).status != ServerStatus.CREATING)
    got = node.servers.get("", server.server_id)
    assert got.status == ServerStatus.ACTIVE, got.error_reason
    return server.server_id


def test_a_backup_reusing_chunks_of_a_backup_being_deleted_keeps_them(
    node_service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen 1: NEW finds every chunk already stored by OLD; OLD is deleted while NEW is being
    read. NEW must end available with every chunk (the chunks it found are pinned)."""
    node = node_service
    data = seeded_bytes(10, 8 * MIB)
    first = node.servers.create(NewServer("", name="first", server_type=1, disk_sizes=(8 * MIB,)))
    second = node.servers.create(NewServer("", name="second", server_type=1, disk_sizes=(8 * MIB,)))
    for server in (first, second):
        node.servers.write_disk(
            "", server.server_id, 0, [(0, data[: 4 * MIB]), (4 * MIB, data[4 * MIB :])]
        )
    old = node.backups.create(NewBackup("", first.server_id, name="old"))
    assert _settled_backup(node, old.backup_id) == BackupStatus.AVAILABLE

    half_read = threading.Event()
    release = threading.Event()
    reads = {"n": 0}
    lock = threading.Lock()
    original = node.backup_engine.read_chunk

    def held_read(plan: Any, chunk_index: int) -> None:
        original(plan, chunk_index)
        with lock:
            reads["n"] += 1
            if reads["n"] == 4:
                half_read.set()
        if reads["n"] >= 4:
            assert release.wait(30)

    monkeypatch.setattr(node.backup_engine, "read_chunk", held_read)
    new = node.backups.create(NewBackup("", second.server_id, name="new"))
    assert half_read.wait(30)
    node.backups.delete("", old.backup_id)  # NEW has captured half its chunks, all found stored
    release.set()

    assert _settled_backup(node, new.backup_id) == BackupStatus.AVAILABLE
    copy = _server_from(node, new.backup_id)
    assert _read_all(node, copy) == data


class _GateThatWritesOnRelease:
    """A disk gate that, the first time it is released while a backup session is open on its
    disk, lets a write land right then (the instant the backup's gates open) and waits for it."""

    def __init__(self, disk: Any, write: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._disk = disk
        self._write = write
        self.fired = False
        self.error: BaseException | None = None

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        self._lock.release()
        if self._disk.session is not None and not self.fired:
            self.fired = True

            def run() -> None:
                try:
                    self._write()
                except BaseException as exc:
                    self.error = exc

            writer = threading.Thread(target=run)
            writer.start()
            writer.join(30)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_write_landing_as_a_backup_opens_its_gates_is_kept_out_of_it_and_not_lost(
    node_service: RegionNode,
) -> None:
    """Seen 7a: a write landing between the backup's gates opening and its capture map being
    published failed INTERNAL and dropped a chunk from a backup then marked available."""
    node = node_service
    server = node.servers.create(NewServer("", server_type=1, disk_sizes=(4 * MIB,)))
    before = seeded_bytes(20, 4 * MIB)
    node.servers.write_disk("", server.server_id, 0, [(0, before)])
    during = seeded_bytes(21, MIB)
    disk = node.parts.disk(server.disks[0].disk_id)

    def write_during() -> None:
        node.servers.write_disk("", server.server_id, 0, [(MIB, during)])

    gate = _GateThatWritesOnRelease(disk, write_during)
    disk.gate = gate  # type: ignore[assignment]

    taken = node.backups.create(NewBackup("", server.server_id))
    assert gate.fired and gate.error is None, gate.error
    assert _settled_backup(node, taken.backup_id) == BackupStatus.AVAILABLE
    assert _read_all(node, server.server_id) == before[:MIB] + during + before[2 * MIB :]
    assert _read_all(node, _server_from(node, taken.backup_id)) == before


def test_restore_and_a_first_use_of_a_disk_never_hold_locks_in_opposite_orders(
    node_service: RegionNode,
) -> None:
    """Seen 7b: restore_backup held the catalog and then waited for the disks lock, while a
    disk's first use held the disks lock and then read the catalog: two calls could stop the
    node. Now nobody waits for the disks lock while holding the catalog."""
    node = node_service
    server = node.servers.create(NewServer("", server_type=1, disk_sizes=(2 * MIB,)))
    node.servers.write_disk("", server.server_id, 0, [(0, seeded_bytes(30, MIB))])
    taken = node.backups.create(NewBackup("", server.server_id))
    assert _settled_backup(node, taken.backup_id) == BackupStatus.AVAILABLE

    errors: list[BaseException] = []

    def restore() -> None:
        try:
            node.backups.restore("", taken.backup_id)
        except BaseException as exc:
            errors.append(exc)

    with node.parts._disks_lock:  # as a disk's first use holds it
        restorer = threading.Thread(target=restore)
        restorer.start()
        time.sleep(0.3)
        # That first use now reads the catalog: it must not be held by a waiting restore.
        got = node.parts.catalog._lock.acquire(timeout=3)
        assert got, "restore_backup waits for the disks lock while holding the catalog"
        node.parts.catalog._lock.release()
    restorer.join(30)
    assert not restorer.is_alive() and not errors, errors
    _until(lambda: node.servers.get("", server.server_id).status == ServerStatus.ACTIVE)


def test_a_restore_resumed_at_start_keeps_its_backup_from_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen 5: after kill -9 during a restore the node resumed it with its backup AVAILABLE:
    the backup could be deleted under the restore. The state a kill leaves (server and backup
    RESTORING, no work running) is made by a node whose restore work never starts."""
    data = seeded_bytes(40, 4 * MIB)
    first = RegionNode(_config(tmp_path / "node"), WallClock()).start()
    server = first.servers.create(NewServer("", server_type=1, disk_sizes=(4 * MIB,)))
    first.servers.write_disk("", server.server_id, 0, [(0, data)])
    taken = first.backups.create(NewBackup("", server.server_id))
    assert _settled_backup(first, taken.backup_id) == BackupStatus.AVAILABLE
    first.servers.write_disk("", server.server_id, 0, [(0, bytes(MIB))])
    monkeypatch.setattr(first.fill, "start", lambda *args, **kwargs: None)
    first.backups.restore("", taken.backup_id)
    first.close()  # as if killed: the restore never ran

    release = threading.Event()
    original = FillEngine._fill

    def held_fill(self: FillEngine, *args: Any) -> None:
        assert release.wait(30)
        original(self, *args)

    monkeypatch.setattr(FillEngine, "_fill", held_fill)
    again = RegionNode(_config(tmp_path / "node"), WallClock()).start()
    try:
        assert again.backups.get("", taken.backup_id).status == BackupStatus.RESTORING
        with pytest.raises(FailedPrecondition, match="restoring"):
            again.backups.delete("", taken.backup_id)
        release.set()
        _until(lambda: again.servers.get("", server.server_id).status == ServerStatus.ACTIVE)
        assert _read_all(again, server.server_id) == data
        assert again.backups.get("", taken.backup_id).status == BackupStatus.AVAILABLE
    finally:
        release.set()
        again.close()


def test_disk_files_no_server_names_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen 6: a create whose transaction failed, or a node killed while creating a server,
    left disk files no catalog row names."""
    node = RegionNode(_config(tmp_path / "node"), WallClock()).start()
    disks = tmp_path / "node" / "disks"
    kept = node.servers.create(NewServer("", server_type=1, disk_sizes=(MIB,)))

    def failing_insert(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the transaction failed")

    monkeypatch.setattr(node.servers, "_insert", failing_insert)
    with pytest.raises(RuntimeError):
        node.servers.create(
            NewServer(
                "",
                server_type=1,
                disk_sizes=(
                    MIB,
                    2 * MIB,
                ),
            )
        )
    assert sorted(p.stem for p in disks.glob("*.disk")) == [kept.disks[0].disk_id]
    node.close()

    (disks / "0b5e7d1c-left-by-a-kill.disk").write_bytes(b"x" * 4096)  # as a kill leaves it
    again = RegionNode(_config(tmp_path / "node"), WallClock()).start()
    try:
        assert sorted(p.stem for p in disks.glob("*.disk")) == [kept.disks[0].disk_id]
    finally:
        again.close()


def test_a_node_refuses_to_start_on_data_written_with_another_chunk_size(
    tmp_path: Path,
) -> None:
    """Seen 7c: another cluster.chunk_size on existing data silently corrupted restores."""
    RegionNode(_config(tmp_path / "node", chunk_size=MIB), WallClock()).start().close()
    with pytest.raises(
        ChunkSizeMismatch, match=r"chunk_size 1048576 but cluster\.chunk_size is 262144"
    ):
        RegionNode(_config(tmp_path / "node", chunk_size=256 * 1024), WallClock())
    RegionNode(_config(tmp_path / "node", chunk_size=MIB), WallClock()).start().close()


def test_every_write_writes_all_or_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen 2, its class: a short pwrite count (a filesystem filling up) was ignored, so an
    acknowledged write could be partly missing. write_all continues a short write and turns
    one that makes no progress into ENOSPC."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    real = os.pwrite
    try:
        monkeypatch.setattr(os, "pwrite", lambda f, d, o: real(f, bytes(d)[:3], o))
        fileio.write_all(fd, b"0123456789", 5)
        assert path.read_bytes() == bytes(5) + b"0123456789"
        monkeypatch.setattr(os, "pwrite", lambda f, d, o: 0)
        with pytest.raises(OSError) as raised:
            fileio.write_all(fd, b"abc", 0)
        assert fileio.out_of_space(raised.value)
    finally:
        os.close(fd)


def test_a_read_or_write_racing_the_deletion_of_its_server_is_refused_never_internal(
    node_service: RegionNode,
) -> None:
    """Found by the seeded fault test: a deletion closed and unlinked a disk file while a read
    was streaming it (and a write was about to flush it); the next use reopened the path and
    failed with FileNotFoundError (INTERNAL), or could have used a descriptor number already
    reused for another file. Now I/O in progress keeps the descriptor open, and any I/O after
    the deletion is DiskGone (FAILED_PRECONDITION)."""
    node = node_service

    def deleted(server_id: str, disk_id: str) -> None:
        node.servers.delete("", server_id)
        _until(lambda: not (node.parts.disk_dir / f"{disk_id}.disk").exists())

    reader = node.servers.create(NewServer("", disk_sizes=(4 * MIB,)))
    node.servers.write_disk("", reader.server_id, 0, [(0, seeded_bytes(50, 4 * MIB))])
    reading = node.servers.read_disk("", reader.server_id, 0, 0, 0)
    assert next(reading)[1] == seeded_bytes(50, 4 * MIB)[:MIB]
    deleted(reader.server_id, reader.disks[0].disk_id)
    with pytest.raises(DiskGone):
        next(reading)

    writer = node.servers.create(NewServer("", disk_sizes=(4 * MIB,)))

    def writes() -> Iterator[tuple[int, bytes]]:
        yield 0, b"x" * 4096
        deleted(writer.server_id, writer.disks[0].disk_id)  # then the stream ends: a flush

    with pytest.raises(DiskGone):
        node.servers.write_disk("", writer.server_id, 0, writes())


def test_a_server_from_an_image_of_some_disks_gets_those_disks_in_order(
    node_service: RegionNode,
) -> None:
    """Found by the seeded fault test: an image of a backup of disks 1 and 2 made a server
    whose disks 0 and 1 stayed empty (the fill paired disks by index, not by position)."""
    node = node_service
    source = node.servers.create(NewServer("", disk_sizes=(2 * MIB, 3 * MIB, 4 * MIB)))
    contents = [seeded_bytes(60 + i, (2 + i) * MIB) for i in range(3)]
    for index, data in enumerate(contents):
        node.servers.write_disk("", source.server_id, index, [(0, data[: 4 * MIB])])
    taken = node.backups.create(NewBackup("", source.server_id, disk_indexes=(1, 2)))
    assert _settled_backup(node, taken.backup_id) == BackupStatus.AVAILABLE
    copy = _server_from(node, taken.backup_id)
    assert [d.size_bytes for d in node.servers.get("", copy).disks] == [3 * MIB, 4 * MIB]
    assert _read_all(node, copy, 0) == contents[1]
    assert _read_all(node, copy, 1) == contents[2]


def test_a_pack_deleted_while_in_use_keeps_its_descriptor_until_the_use_ends(
    tmp_path: Path,
) -> None:
    """Found by the 30-minute seeded soak (13 pages of a server's disk read as zeros): a release
    punching the space of a chunk through a pack's descriptor that a concurrent release had just
    closed (the pack held nothing any more, so it was deleted) punched whatever file had reused
    that descriptor number, such as a server's disk. Now a pack's descriptor is closed only once
    its last user is done, and a pack already gone has nothing left to free."""
    catalog = Catalog(tmp_path / "catalog.db")
    store = ChunkStore(tmp_path / "chunks", catalog)
    pack = tmp_path / "chunks" / "000000000007.pack"
    pack.write_bytes(PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION) + bytes(4096))
    try:
        with store._pack_fd(7) as fd:
            assert fd is not None
            store._delete_pack_if_empty(7)  # a concurrent release: the pack holds nothing
            assert not pack.exists()
            os.fstat(fd)  # still open: the number cannot be reused under this user
            other = os.open(tmp_path / "another-file", os.O_RDWR | os.O_CREAT, 0o600)
            assert other != fd
            os.close(other)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed once its user was done
        with store._pack_fd(7) as gone:
            assert gone is None
    finally:
        store.close()
        catalog.close()


def test_a_backup_waits_for_a_writers_copy_on_write_before_it_commits(
    node_service: RegionNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the 30-minute seeded soak (a server made from an image read a whole chunk as
    zeros): a write took a chunk the backup had not read yet out of its to-do set and was still
    capturing the old content when the backup's readers finished; the backup committed without
    that chunk, AVAILABLE, and the chunk read as zeros ever after. Now the backup waits for every
    capture a writer started."""
    node = node_service
    data = seeded_bytes(70, 4 * MIB)
    server = node.servers.create(NewServer("", disk_sizes=(4 * MIB,)))
    node.servers.write_disk("", server.server_id, 0, [(0, data)])
    release_reads, in_capture, release_capture = (threading.Event() for _ in range(3))
    original_read = node.backup_engine.read_chunk
    original_put = node.parts.store.put

    def held_read(plan: Any, chunk_index: int) -> None:
        assert release_reads.wait(30)
        original_read(plan, chunk_index)

    def slow_put(digest: bytes, chunk: Any) -> int:
        if threading.current_thread().name == "writer":
            in_capture.set()
            assert release_capture.wait(30)
        return original_put(digest, chunk)

    monkeypatch.setattr(node.backup_engine, "read_chunk", held_read)
    monkeypatch.setattr(node.parts.store, "put", slow_put)
    taken = node.backups.create(NewBackup("", server.server_id))
    writer = threading.Thread(
        target=lambda: node.servers.write_disk("", server.server_id, 0, [(2 * MIB, b"z" * 4096)]),
        name="writer",
    )
    writer.start()
    assert in_capture.wait(30)  # the writer took chunk 2 and is capturing its old content
    release_reads.set()
    time.sleep(0.5)  # the readers are done with chunks 0, 1 and 3
    during = node.backups.get("", taken.backup_id).status
    release_capture.set()
    writer.join(30)
    assert during == BackupStatus.CREATING, "the backup committed before the capture ended"
    assert _settled_backup(node, taken.backup_id) == BackupStatus.AVAILABLE
    assert _read_all(node, _server_from(node, taken.backup_id)) == data
