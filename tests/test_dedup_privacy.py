"""Issue 6: deduplication never crosses accounts. What a replication job is told the target
already holds counts only the chunks of the replica's own account, so that no one learns what
another account stores; chunks that already arrived for the account's replica (a stream cut
short) are not asked for again. The store still keeps each chunk's bytes once. Domain tests on
a real catalog and chunk store in a temp dir."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csbs.clock import WallClock
from csbs.config import ProjectConfig
from csbs.errors import FailedPrecondition
from region_node.config import NodeConfig
from region_node.models import (
    Backup,
    BackupStatus,
    ManifestEntry,
    NewBackup,
    NewImage,
    NewServer,
    Origin,
    ReplicaSpec,
    ReplicationWay,
    ServerStatus,
    ServerType,
)
from region_node.node import RegionNode
from tests.node_helpers import MIB, seeded_bytes

DISK_BYTES = 6 * MIB


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RegionNode]:
    """A region node's domain whose two projects belong to two accounts."""
    config = NodeConfig(
        region_id="cn-north-4",
        display_name="CN North-Beijing4",
        listen="127.0.0.1:0",
        accepts_replication=True,
        projects=(
            ProjectConfig("a1", "a1", "acct-a", True),
            ProjectConfig("b1", "b1", "acct-b", True),
        ),
        data_dir=tmp_path / "node",
        chunk_size=MIB,
    )
    node = RegionNode(config, WallClock()).start()
    yield node
    node.close()


def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _content() -> bytes:
    """Content X: five non-zero chunks (the first two equal, one partly zero), then zeros."""
    first = seeded_bytes(1, MIB)
    data = first + first + seeded_bytes(2, 2 * MIB + MIB // 2)
    return data + bytes(DISK_BYTES - len(data))


def _backup_of(service: RegionNode, project_id: str, content: bytes) -> Backup:
    server = service.servers.create(NewServer(project_id, server_type=1, disk_sizes=(DISK_BYTES,)))
    service.servers.write_disk(
        project_id,
        server.server_id,
        0,
        [(o, content[o : o + 4 * MIB]) for o in range(0, len(content), 4 * MIB)],
    )
    taken = service.backups.create(NewBackup(project_id, server.server_id))
    _until(lambda: service.backups.get(project_id, taken.backup_id).status != BackupStatus.CREATING)
    done = service.backups.get(project_id, taken.backup_id)
    assert done.status == BackupStatus.AVAILABLE, done.error_reason
    return done


def _entries(service: RegionNode, backup_id: str) -> list[ManifestEntry]:
    return [e for part in service.replicas.manifest(backup_id) for e in part]


def _replica(
    service: RegionNode, project_id: str, source: Backup, job_id: str
) -> tuple[str, list[ManifestEntry]]:
    """A replica in `project_id` of the backup `source`, as the coordinator would make it."""
    entries = _entries(service, source.backup_id)
    spec = ReplicaSpec(
        project_id=project_id,
        name=f"replica-{job_id}",
        description="",
        server_type=ServerType.ECS,
        disks=source.disks,
        origin=Origin(
            replicated=True,
            source_region_id="ap-southeast-1",
            source_project_id="elsewhere",
            source_backup_id=source.backup_id,
            way=ReplicationWay.MANUAL,
            job_id=job_id,
        ),
        job_id=job_id,
    )
    replica = service.replicas.create(spec, entries)
    assert replica.status == BackupStatus.REPLICATING
    return replica.backup_id, entries


def _chunks(content: bytes, entries: list[ManifestEntry]) -> dict[bytes, bytes]:
    """The replica's chunks by hash, as the source region would send them."""
    return {e.hash: content[e.chunk_index * MIB : e.chunk_index * MIB + e.length] for e in entries}


def _cut_after(chunks: list[tuple[bytes, bytes]], n: int) -> Iterator[tuple[bytes, bytes]]:
    """A stream of chunks cut short after `n` of them."""
    yield from chunks[:n]
    raise ConnectionError("stream cut")


def _arrivals(service: RegionNode, replica_id: str) -> int:
    with service.parts.catalog.read() as conn:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM replica_arrivals WHERE replica_id = ?", (replica_id,)
            ).fetchone()[0]
        )


def test_another_accounts_chunks_are_not_reported_held(service: RegionNode) -> None:
    content = _content()
    theirs = _backup_of(service, "b1", content)
    stored = service.stored_bytes()

    replica_id, entries = _replica(service, "a1", theirs, "job-a")
    assert len(entries) == 5
    found = service.replicas.find_missing_chunks(replica_id)
    assert found.missing == list(dict.fromkeys(e.hash for e in entries))
    assert len(found.missing) == 4  # the two equal chunks are asked for once
    assert found.chunks_total == 5
    assert found.bytes_total == sum(e.length for e in entries)
    assert found.chunks_already_held == 0
    assert found.bytes_already_held == 0

    # What arrived for a replica of account B does not count for account A either.
    theirs_too, _ = _replica(service, "b1", theirs, "job-b")
    service.replicas.write_chunks(theirs_too, list(_chunks(content, entries).items()))
    again = service.replicas.find_missing_chunks(replica_id)
    assert again.missing == found.missing
    assert again.chunks_already_held == 0

    # Sent again, the chunks are accepted, though the store keeps their bytes only once.
    written, written_bytes, present = service.replicas.write_chunks(
        replica_id, list(_chunks(content, entries).items())
    )
    assert (written, written_bytes, present) == (0, 0, 4)
    assert service.stored_bytes() == stored


def test_a_resumed_job_does_not_resend_what_arrived(service: RegionNode) -> None:
    content = _content()
    theirs = _backup_of(service, "b1", content)
    replica_id, entries = _replica(service, "a1", theirs, "job-a")
    first = service.replicas.find_missing_chunks(replica_id)
    by_hash = _chunks(content, entries)
    to_send = [(h, by_hash[h]) for h in first.missing]

    with pytest.raises(ConnectionError, match="stream cut"):
        service.replicas.write_chunks(replica_id, _cut_after(to_send, 2))
    assert _arrivals(service, replica_id) == 2

    resumed = service.replicas.find_missing_chunks(replica_id)
    arrived = {h for h, _ in to_send[:2]}
    assert resumed.missing == [h for h, _ in to_send[2:]]
    held = [e for e in entries if e.hash in arrived]
    assert len(held) == 3  # the first chunk is in the manifest twice
    assert resumed.chunks_already_held == len(held)
    assert resumed.bytes_already_held == sum(e.length for e in held)
    assert resumed.chunks_total == first.chunks_total

    # What arrived for one replica of account A counts for another of the same account.
    second_id, _ = _replica(service, "a1", theirs, "job-a2")
    assert service.replicas.find_missing_chunks(second_id).missing == resumed.missing

    service.replicas.write_chunks(replica_id, [(h, by_hash[h]) for h in resumed.missing])
    done = service.replicas.find_missing_chunks(replica_id)
    assert done.missing == []
    assert done.chunks_already_held == done.chunks_total == 5

    # Removing the other replica removes what arrived for it.
    service.replicas.write_chunks(second_id, to_send[:1])
    assert _arrivals(service, second_id) == 1
    assert service.replicas.remove(second_id, "")
    assert _arrivals(service, second_id) == 0


def test_a_completed_replica_counts_for_its_account(service: RegionNode) -> None:
    content = _content()
    theirs = _backup_of(service, "b1", content)
    replica_id, entries = _replica(service, "a1", theirs, "job-a")
    by_hash = _chunks(content, entries)
    service.replicas.write_chunks(replica_id, list(by_hash.items()))
    completed = service.replicas.complete(replica_id)
    assert completed.status == BackupStatus.AVAILABLE
    assert _arrivals(service, replica_id) == 0

    # The completed replica itself: a job resumed after completing it asks for nothing.
    assert service.replicas.find_missing_chunks(replica_id).missing == []

    second_id, _ = _replica(service, "a1", theirs, "job-a2")
    found = service.replicas.find_missing_chunks(second_id)
    assert found.missing == []
    assert found.chunks_already_held == found.chunks_total == 5
    assert found.bytes_already_held == found.bytes_total
    assert service.replicas.complete(second_id).status == BackupStatus.AVAILABLE

    # Account B's view is unchanged by account A's replicas: its own backup holds the chunks.
    theirs_replica, _ = _replica(service, "b1", theirs, "job-b")
    assert service.replicas.find_missing_chunks(theirs_replica).missing == []


def test_a_completed_replica_reads_back_its_content(service: RegionNode) -> None:
    content = _content()
    theirs = _backup_of(service, "b1", content)
    replica_id, entries = _replica(service, "a1", theirs, "job-a")
    by_hash = _chunks(content, entries)
    with pytest.raises(ConnectionError):
        service.replicas.write_chunks(replica_id, _cut_after(list(by_hash.items()), 1))
    left = service.replicas.find_missing_chunks(replica_id).missing
    service.replicas.write_chunks(replica_id, [(h, by_hash[h]) for h in left])
    service.replicas.complete(replica_id)

    # Deleting account B's backup leaves account A's replica whole.
    service.backups.delete("b1", theirs.backup_id)

    hashes = [e.hash for e in _entries(service, replica_id)]
    assert [data for _, data in service.replicas.read_chunks(hashes)] == [
        by_hash[h] for h in hashes
    ]

    image = service.images.create(NewImage("a1", replica_id))
    server = service.servers.create(NewServer("a1", image_id=image.image_id))
    _until(lambda: service.servers.get("a1", server.server_id).status != ServerStatus.CREATING)
    assert service.servers.get("a1", server.server_id).status == ServerStatus.ACTIVE
    restored = b"".join(
        data for _, data in service.servers.read_disk("a1", server.server_id, 0, 0, 0)
    )
    assert restored == content


def test_a_replica_removed_while_its_chunks_arrive_is_said_removed(service: RegionNode) -> None:
    """RemoveReplica racing WriteChunks (the node soak saw it): the writer learns that the
    replica was removed (FAILED_PRECONDITION), not that its chunks are strangers to it, and what
    it wrote is given back."""
    content = _content()
    source = _backup_of(service, "b1", content)
    replica_id, entries = _replica(service, "a1", source, "job-removed")
    service.backups.delete("b1", source.backup_id)
    by_hash = _chunks(content, entries)

    def removed_midway() -> Iterator[tuple[bytes, bytes]]:
        chunks = list(by_hash.items())
        yield chunks[0]
        assert service.replicas.remove(replica_id, "job-removed")
        yield from chunks[1:]

    with pytest.raises(FailedPrecondition, match="was removed"):
        service.replicas.write_chunks(replica_id, removed_midway())
    # The source deleted, the replica removed, the writer gave back what it wrote: no chunk is
    # indexed, pending or pinned any more.
    with service.parts.catalog.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
    with service.parts.store._lock:
        assert not service.parts.store._pending and not service.parts.store._pins
