"""Issue 12: a replication whose chunk lists do not fit in one message. FindMissingChunks answers
a page of the manifest at a time, the coordinator relays page after page, and the target checks
what arrives against its manifest a batch at a time, never loading it whole. With 64 KiB chunks
a backup of 4,608 chunks takes two pages of 4,096; its last chunks repeat the first ones, so
the second page must not name what the first page's relay already brought."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import grpc
import pytest

from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub
from region_node.storage.chunk_store import chunk_hash
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import (
    backup,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    write,
)
from tests.replication_helpers import replicated

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
CHUNK = 64 * 1024
DISTINCT = 4_320  # chunks of distinct data, then REPEATED chunks that repeat the first ones
REPEATED = 288  # 4,608 chunks in all: 288 MiB
PAGE = 4096  # FindMissingChunks' most entries a page

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path = write_cluster_config(tmp_path_factory.mktemp("paged"), chunk_size=CHUNK)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def test_a_backup_of_more_chunks_than_one_page_replicates_identical_and_sends_each_chunk_once(
    small_chunks: Cluster,
) -> None:
    stub = node(small_chunks.channel(SOURCE))
    chunks = DISTINCT + REPEATED
    server = make_server(stub, [(chunks * CHUNK) >> 20])
    distinct = seeded_bytes(12, DISTINCT * CHUNK)
    write(stub, server.server_id, 0, 0, distinct + distinct[: REPEATED * CHUNK])
    source = backup(stub, server.server_id)
    want = disk_sha256(stub, server.server_id, 0)

    coordinator = CoordinatorStub(small_chunks.coordinator_channel())
    done = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    progress = done.progress
    assert progress.chunks_planned == chunks
    assert progress.bytes_planned == chunks * CHUNK
    # Each distinct chunk crossed once: the repeats on the second page had arrived already.
    assert progress.chunks_sent == DISTINCT
    assert progress.bytes_sent == DISTINCT * CHUNK

    internal = RegionNodeInternalStub(small_chunks.channel(TARGET))
    first = internal.FindMissingChunks(
        pb.FindMissingChunksRequest(replica_id=done.replica_id), timeout=30
    )
    assert (first.chunks_total, first.chunks_already_held) == (chunks, chunks)
    assert first.bytes_total == chunks * CHUNK and not first.missing
    assert first.next_page_token
    second = internal.FindMissingChunks(
        pb.FindMissingChunksRequest(replica_id=done.replica_id, page_token=first.next_page_token),
        timeout=30,
    )
    assert not second.missing and not second.next_page_token
    assert second.chunks_total == 0  # the counts of the whole manifest come on the first page

    target = node(small_chunks.channel(TARGET))
    restored = server_from_backup(target, done.replica_id)
    assert disk_sha256(target, restored.server_id, 0) == want


def _replica_header(job_id: str, disk_bytes: int) -> pb.CreateReplicaHeader:
    header = pb.CreateReplicaHeader(
        project_id=f"{TARGET}_default",
        name=f"rep-{job_id}",
        job_id=job_id,
        server_type=common_pb2.SERVER_TYPE_ECS,
    )
    header.disks.append(pb.BackupDisk(disk_index=0, size_bytes=disk_bytes))
    header.origin.CopyFrom(
        pb.BackupOrigin(
            replicated=True,
            source_region_id=SOURCE,
            source_backup_id="b-paged",
            way=common_pb2.REPLICATION_WAY_MANUAL,
        )
    )
    return header


def _entry(chunk_index: int, data: bytes) -> pb.ManifestEntry:
    return pb.ManifestEntry(
        disk_index=0, chunk_index=chunk_index, hash=chunk_hash(data), length=len(data)
    )


def test_pages_of_missing_chunks_cover_the_manifest_once_and_bad_pages_are_refused(
    small_chunks: Cluster,
) -> None:
    internal = RegionNodeInternalStub(small_chunks.channel(TARGET))
    datas = [seeded_bytes(1000 + i, CHUNK) for i in range(10)]
    entries = [_entry(i, d) for i, d in enumerate(datas)]
    replica = internal.CreateReplica(
        iter(
            [
                pb.CreateReplicaRequest(header=_replica_header("job-pages", 1 << 20)),
                pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=entries)),
                pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=len(entries))),
            ]
        ),
        timeout=30,
    )
    named: list[bytes] = []
    token = ""
    pages = 0
    while True:
        page = internal.FindMissingChunks(
            pb.FindMissingChunksRequest(
                replica_id=replica.backup_id, page_size=3, page_token=token
            ),
            timeout=30,
        )
        if not token:
            assert (page.chunks_total, page.bytes_total) == (10, 10 * CHUNK)
            assert page.chunks_already_held == 0
        named += page.missing
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert named == [e.hash for e in entries] and pages == 4

    # A chunk the manifest does not name is refused, and the call keeps nothing of it.
    stranger = seeded_bytes(99, CHUNK)
    code, message = refusal(
        lambda: internal.WriteChunks(
            iter(
                [
                    pb.ChunkBatch(chunks=[pb.Chunk(hash=entries[0].hash, data=datas[0])]),
                    pb.ChunkBatch(chunks=[pb.Chunk(hash=_entry(0, stranger).hash, data=stranger)]),
                ]
            ),
            timeout=30,
            metadata=(("x-csbs-replica-id", replica.backup_id),),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not in replica" in message
    after = internal.FindMissingChunks(
        pb.FindMissingChunksRequest(replica_id=replica.backup_id), timeout=30
    )
    assert after.chunks_already_held == 0  # the batch that held the stranger was not kept

    def page_at(token: str) -> object:
        return internal.FindMissingChunks(
            pb.FindMissingChunksRequest(replica_id=replica.backup_id, page_token=token),
            timeout=30,
        )

    for bad in ("x", "1", "1.x", "-1.2"):
        code, message = refusal(partial(page_at, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in message
    code, message = refusal(
        lambda: internal.FindMissingChunks(
            pb.FindMissingChunksRequest(replica_id=replica.backup_id, page_size=PAGE + 1),
            timeout=30,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in message


def test_a_manifest_out_of_order_or_with_an_entry_twice_is_refused_and_makes_no_replica(
    small_chunks: Cluster,
) -> None:
    internal = RegionNodeInternalStub(small_chunks.channel(TARGET))
    datas = [seeded_bytes(2000 + i, CHUNK) for i in range(3)]
    cases = {
        "job-order": [_entry(1, datas[1]), _entry(0, datas[0])],
        "job-twice": [_entry(0, datas[0]), _entry(2, datas[2]), _entry(2, datas[2])],
    }

    def create(job_id: str, entries: list[pb.ManifestEntry]) -> object:
        return internal.CreateReplica(
            iter(
                [
                    pb.CreateReplicaRequest(header=_replica_header(job_id, 1 << 20)),
                    pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=entries[:1])),
                    pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=entries[1:])),
                    pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=len(entries))),
                ]
            ),
            timeout=30,
        )

    for job_id, entries in cases.items():
        code, message = refusal(partial(create, job_id, entries))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        assert "in order of disk_index, then chunk_index" in message
        removed = internal.RemoveReplica(pb.RemoveReplicaRequest(job_id=job_id), timeout=30)
        assert not removed.removed  # nothing was made for that job


def test_a_manifest_stream_that_ends_before_its_end_makes_no_replica(
    small_chunks: Cluster,
) -> None:
    """What the node sees when the coordinator's CreateReplica is cancelled or its connection
    lost mid-manifest: gRPC may end the stream as if it were complete (grpc/grpc#33038). Found
    by the cluster soak (seed 20261294): such a replica was made from part of its manifest,
    completed, and listed available. Now only a stream closed by ManifestEnd with the count
    of the entries sent makes a replica."""
    internal = RegionNodeInternalStub(small_chunks.channel(TARGET))
    datas = [seeded_bytes(3000 + i, CHUNK) for i in range(3)]
    entries = [_entry(i, d) for i, d in enumerate(datas)]
    header = pb.CreateReplicaRequest(header=_replica_header("job-cut", 1 << 20))
    first = pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=entries[:2]))
    rest = pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=entries[2:]))
    cases = [
        ("ended before the manifest's end", [header]),
        ("ended before the manifest's end", [header, first]),
        ("announces 3 entries, 2 came", [header, first, _end(3)]),
        ("nothing follows the manifest's end", [header, first, rest, _end(3), rest]),
    ]
    for expected, messages in cases:
        code, message = refusal(
            lambda m=messages: internal.CreateReplica(iter(m), timeout=30)  # type: ignore[misc]
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in message, message
        removed = internal.RemoveReplica(pb.RemoveReplicaRequest(job_id="job-cut"), timeout=30)
        assert not removed.removed  # nothing was made for that job
    # Whole, with its end: the replica holds every entry, in order.
    replica = internal.CreateReplica(iter([header, first, rest, _end(3)]), timeout=30)
    parts = internal.GetBackupManifest(
        pb.GetBackupManifestRequest(backup_id=replica.backup_id), timeout=30
    )
    assert [e.hash for p in parts for e in p.entries] == [e.hash for e in entries]


def _end(entries: int) -> pb.CreateReplicaRequest:
    return pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=entries))


def test_read_chunks_sends_small_chunks_several_a_message_in_order(small_chunks: Cluster) -> None:
    """Issue 12: 40 chunks of 64 KiB come in messages of at most 1 MiB of data (16 chunks),
    in the order asked, each whole."""
    stub = node(small_chunks.channel(SOURCE))
    server = make_server(stub, [4])
    data = seeded_bytes(77, 40 * CHUNK)
    write(stub, server.server_id, 0, 0, data)
    source = backup(stub, server.server_id)
    internal = RegionNodeInternalStub(small_chunks.channel(SOURCE))
    parts = internal.GetBackupManifest(
        pb.GetBackupManifestRequest(backup_id=source.backup_id), timeout=30
    )
    hashes = [e.hash for part in parts for e in part.entries]
    assert len(hashes) == 40
    batches = list(internal.ReadChunks(pb.ReadChunksRequest(hashes=hashes), timeout=30))
    assert [len(b.chunks) for b in batches] == [16, 16, 8]
    got = [c for b in batches for c in b.chunks]
    assert [c.hash for c in got] == hashes
    assert b"".join(c.data for c in got) == data


def test_a_writer_that_stops_taking_groups_of_arriving_chunks_ends_them_cleanly() -> None:
    """engine.transfer._groups gives what arrived before a cut stream, but a consumer that stops
    (a bad chunk, a full disk) closes it without a second group or an error of its own."""
    from region_node.engine.transfer import _groups

    def cut() -> Iterator[tuple[bytes, bytes]]:
        yield b"a", b"x" * 10
        yield b"b", b"y" * 10
        raise ConnectionError("the stream was cut")

    groups = _groups(cut(), 15)
    assert [d for d, _ in next(groups)] == [b"a"]
    groups.close()  # no "generator ignored GeneratorExit"

    seen = []
    with pytest.raises(ConnectionError):
        for group in _groups(cut(), 15):
            seen.append([d for d, _ in group])
    assert seen == [[b"a"], [b"b"]]  # what arrived whole before the cut is still given
