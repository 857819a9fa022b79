"""Region node backups, restores and images, through the real gRPC surface of real node
processes: byte-identical round trips, incremental backups by write tracking, chunk store
space, chosen disks (R1b), and health and reflection for stock tools."""

from __future__ import annotations

import hashlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from tests.harness import Cluster
from tests.node_helpers import (
    MIB,
    allocated_bytes,
    backup,
    disk_sha256,
    make_server,
    node,
    read,
    restore,
    seeded_bytes,
    server_from_backup,
    write,
)

REGION = "cn-north-4"


def test_backup_image_server_round_trip_is_byte_identical_and_restore_rewinds(
    shared_cluster: Cluster,
) -> None:
    stub = node(shared_cluster.channel(REGION))
    source = make_server(stub, [32, 16], name="web-01")
    write(stub, source.server_id, 0, 0, seeded_bytes(1, 8 * MIB))
    write(stub, source.server_id, 0, 20 * MIB + 12345, seeded_bytes(2, 3 * MIB))
    write(stub, source.server_id, 1, 5 * MIB, seeded_bytes(3, 2 * MIB + 7))
    before = [disk_sha256(stub, source.server_id, i) for i in (0, 1)]

    taken = backup(stub, source.server_id)
    assert [d.disk_index for d in taken.disks] == [0, 1]
    assert taken.disks[0].system and not taken.disks[1].system
    assert taken.server_type == common_pb2.SERVER_TYPE_ECS
    assert not taken.origin.replicated

    copy = server_from_backup(stub, taken.backup_id)
    assert [disk_sha256(stub, copy.server_id, i) for i in (0, 1)] == before
    assert [d.size_bytes for d in copy.disks] == [32 * MIB, 16 * MIB]

    write(stub, source.server_id, 0, 0, seeded_bytes(4, 30 * MIB))
    write(stub, source.server_id, 1, 0, seeded_bytes(5, 16 * MIB))
    assert disk_sha256(stub, source.server_id, 0) != before[0]
    restore(stub, taken.backup_id)
    assert [disk_sha256(stub, source.server_id, i) for i in (0, 1)] == before


def test_incremental_backup_reads_and_stores_only_the_changed_chunks(
    shared_cluster: Cluster,
) -> None:
    stub = node(shared_cluster.channel(REGION))
    server = make_server(stub, [100])
    write(stub, server.server_id, 0, 0, seeded_bytes(10, 100 * MIB))
    first = backup(stub, server.server_id)
    assert first.bytes_read == 100 * MIB
    assert first.bytes_stored == 100 * MIB
    first_hash = disk_sha256(stub, server.server_id, 0)

    # 1% of the disk, rewritten as one 1 MiB extent.
    write(stub, server.server_id, 0, 42 * MIB, seeded_bytes(11, MIB))
    second_hash = disk_sha256(stub, server.server_id, 0)
    second = backup(stub, server.server_id)
    assert second.bytes_to_read == MIB
    assert second.bytes_read == MIB
    assert second.bytes_stored == MIB

    # Each backup restores its own point in time, on its own.
    assert disk_sha256(stub, server_from_backup(stub, first.backup_id).server_id, 0) == first_hash
    assert disk_sha256(stub, server_from_backup(stub, second.backup_id).server_id, 0) == (
        second_hash
    )
    restore(stub, first.backup_id)
    assert disk_sha256(stub, server.server_id, 0) == first_hash


def test_first_backup_reads_only_written_chunks_of_a_sparse_disk(shared_cluster: Cluster) -> None:
    stub = node(shared_cluster.channel(REGION))
    server = make_server(stub, [40 * 1024])  # 40 GiB, sparse
    write(stub, server.server_id, 0, 7 * 1024 * MIB, seeded_bytes(20, 2 * MIB))
    taken = backup(stub, server.server_id)
    assert taken.bytes_to_read == 2 * MIB
    assert taken.bytes_stored == 2 * MIB
    assert taken.size_bytes == 40 * 1024 * MIB
    disk_dir = shared_cluster.config.region(REGION).data_dir / "disks"
    disk_file = disk_dir / f"{server.disks[0].disk_id}.disk"
    assert disk_file.stat().st_size == 40 * 1024 * MIB
    assert disk_file.stat().st_blocks * 512 < 16 * MIB


def test_all_zero_chunks_are_not_stored(shared_cluster: Cluster) -> None:
    stub = node(shared_cluster.channel(REGION))
    server = make_server(stub, [16])
    write(stub, server.server_id, 0, 0, bytes(8 * MIB))
    write(stub, server.server_id, 0, 8 * MIB, seeded_bytes(30, MIB))
    taken = backup(stub, server.server_id)
    assert taken.bytes_read == 9 * MIB
    assert taken.bytes_stored == MIB
    copy = server_from_backup(stub, taken.backup_id)
    assert read(stub, copy.server_id, 0, 0, 9 * MIB) == bytes(8 * MIB) + seeded_bytes(30, MIB)


def test_deleting_backups_shrinks_the_chunk_store_but_not_while_an_image_needs_one(
    cluster: Cluster,
) -> None:
    stub = node(cluster.channel(REGION))
    chunks_dir = cluster.config.region(REGION).data_dir / "chunks"
    empty = allocated_bytes(chunks_dir)
    server = make_server(stub, [64])
    write(stub, server.server_id, 0, 0, seeded_bytes(40, 64 * MIB))
    first = backup(stub, server.server_id)
    write(stub, server.server_id, 0, 0, seeded_bytes(41, 16 * MIB))
    second = backup(stub, server.server_id)
    assert allocated_bytes(chunks_dir) >= empty + 80 * MIB

    image = stub.CreateImage(pb.CreateImageRequest(backup_id=first.backup_id))
    try:
        stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=first.backup_id))
        raise AssertionError("a backup with an image was deleted")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert image.image_id in (exc.details() or "")

    # Deleting the first frees only what the second does not share (the first 16 MiB).
    stub.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id))
    freed = stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=first.backup_id)).bytes_freed
    assert freed == 16 * MIB
    copy = server_from_backup(stub, second.backup_id)
    expected = seeded_bytes(41, 16 * MIB) + seeded_bytes(40, 64 * MIB)[16 * MIB :]
    assert hashlib.sha256(read(stub, copy.server_id, 0)).digest() == (
        hashlib.sha256(expected).digest()
    )
    for image_id in stub.GetBackup(pb.GetBackupRequest(backup_id=second.backup_id)).image_ids:
        stub.DeleteImage(pb.DeleteImageRequest(image_id=image_id))
    freed = stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=second.backup_id)).bytes_freed
    assert freed == 64 * MIB
    assert allocated_bytes(chunks_dir) <= empty + MIB


def test_r1b_a_backup_can_hold_chosen_disks_only(shared_cluster: Cluster) -> None:
    stub = node(shared_cluster.channel(REGION))
    server = make_server(stub, [8, 8, 8])
    write(stub, server.server_id, 2, 0, seeded_bytes(50, MIB))
    data_only = backup(stub, server.server_id, disk_indexes=[2])
    assert [(d.disk_index, d.system) for d in data_only.disks] == [(2, False)]
    assert data_only.bytes_stored == MIB
    with_system = backup(stub, server.server_id, disk_indexes=[0, 2])
    assert [(d.disk_index, d.system) for d in with_system.disks] == [(0, True), (2, False)]


def test_bare_metal_servers_are_backed_up_with_their_type(shared_cluster: Cluster) -> None:
    stub = node(shared_cluster.channel(REGION))
    server = make_server(stub, [8], server_type=common_pb2.SERVER_TYPE_BMS)
    assert server.server_type == common_pb2.SERVER_TYPE_BMS
    assert backup(stub, server.server_id).server_type == common_pb2.SERVER_TYPE_BMS


def test_a_restarted_node_has_everything_it_had(cluster: Cluster) -> None:
    stub = node(cluster.channel(REGION))
    server = make_server(stub, [16], name="db-01")
    write(stub, server.server_id, 0, 0, seeded_bytes(60, 16 * MIB))
    taken = backup(stub, server.server_id)
    before = disk_sha256(stub, server.server_id, 0)
    cluster.node(REGION).stop()
    cluster.node(REGION).restart()
    stub = node(cluster.channel(REGION))
    assert stub.GetServer(pb.GetServerRequest(server_id=server.server_id)).name == "db-01"
    again = stub.GetBackup(pb.GetBackupRequest(backup_id=taken.backup_id))
    assert again.status == pb.BACKUP_STATUS_AVAILABLE
    assert disk_sha256(stub, server.server_id, 0) == before
    copy = server_from_backup(stub, taken.backup_id)
    assert disk_sha256(stub, copy.server_id, 0) == before
    # Nothing changed since: the next backup reads nothing.
    assert backup(stub, server.server_id).bytes_read == 0


def test_every_node_serves_health_and_reflection(shared_cluster: Cluster) -> None:
    channel = shared_cluster.channel(REGION)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "csbs.v1.RegionNode"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"csbs.v1.RegionNode", "grpc.health.v1.Health"} <= names
