"""Manual cross-region replication (M1) end to end, through the coordinator and real region
nodes: the whole story (backup, replicate, image, server, identical disks), both sides' view,
and every rule of ../shared/spec/replication.md that M1 must keep."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub, RegionNodeInternalStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    all_backups,
    backup,
    disk_sha256,
    make_server,
    manifest_end,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    write,
)
from tests.replication_helpers import follow, replicate, replicated

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
TARGET_DR = "cn-east-3_dr"  # the target region's second, non-main project
NO_REPLICATION = "cn-south-1"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def coordinator(coordinated: Cluster) -> CoordinatorStub:
    return CoordinatorStub(coordinated.coordinator_channel())


def _source_backup(
    cluster: Cluster, seed: int, sizes_mib: tuple[int, ...] = (16, 8)
) -> tuple[pb.Backup, list[str]]:
    """A server with recognisable data on each disk, backed up; with its disks' sha256."""
    stub = node(cluster.channel(SOURCE))
    server = make_server(stub, list(sizes_mib))
    for index, size in enumerate(sizes_mib):
        write(stub, server.server_id, index, MIB, seeded_bytes(seed + index, (size - 2) * MIB))
    hashes = [disk_sha256(stub, server.server_id, i) for i in range(len(sizes_mib))]
    return backup(stub, server.server_id), hashes


def test_m1_the_whole_story_ends_in_a_byte_identical_server_in_the_target_region(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, hashes = _source_backup(coordinated, seed=1)
    job = replicate(
        coordinator,
        source.backup_id,
        SOURCE,
        TARGET,
        target_project_id=TARGET_DR,
        name="备份_副本-01",
        description="DR copy for the rehearsal",
    )
    assert job.status in (
        cpb.REPLICATION_JOB_STATUS_WAITING,
        cpb.REPLICATION_JOB_STATUS_REPLICATING,
    )
    assert job.way == common_pb2.REPLICATION_WAY_MANUAL
    updates = follow(coordinator, job.job_id)
    done = updates[-1]
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
    planned = done.progress.bytes_planned
    assert planned == sum(size * MIB for size in (14, 6))
    assert done.progress.bytes_sent + done.progress.bytes_skipped == planned
    assert done.target_project_id == TARGET_DR
    assert done.finished_at.seconds >= done.started_at.seconds > 0

    # The target region: the replica in the chosen project, available, with its origin.
    east = node(coordinated.channel(TARGET))
    replica = east.GetBackup(pb.GetBackupRequest(project_id=TARGET_DR, backup_id=done.replica_id))
    assert replica.status == pb.BACKUP_STATUS_AVAILABLE
    assert replica.name == "备份_副本-01"
    assert replica.description == "DR copy for the rehearsal"
    assert replica.origin.replicated
    assert (replica.origin.source_region_id, replica.origin.source_backup_id) == (
        SOURCE,
        source.backup_id,
    )
    assert replica.origin.way == common_pb2.REPLICATION_WAY_MANUAL
    assert [(d.disk_index, d.system, d.size_bytes) for d in replica.disks] == [
        (0, True, 16 * MIB),
        (1, False, 8 * MIB),
    ]

    # The source region: the backup lists its replication record.
    north = node(coordinated.channel(SOURCE))
    (record,) = north.GetBackup(pb.GetBackupRequest(backup_id=source.backup_id)).replications
    assert (record.target_region_id, record.target_project_id, record.replica_id) == (
        TARGET,
        TARGET_DR,
        done.replica_id,
    )
    assert record.status == pb.REPLICATION_RECORD_STATUS_SUCCESS
    assert record.way == common_pb2.REPLICATION_WAY_MANUAL

    # An image from the replica, a server from the image: the same disks, byte for byte.
    server = server_from_backup(east, done.replica_id, TARGET_DR)
    assert [disk_sha256(east, server.server_id, i, TARGET_DR) for i in (0, 1)] == hashes

    # Deleting the source backup afterwards leaves the replica intact.
    north.DeleteBackup(pb.DeleteBackupRequest(backup_id=source.backup_id))
    again = east.GetBackup(pb.GetBackupRequest(project_id=TARGET_DR, backup_id=done.replica_id))
    assert again.status == pb.BACKUP_STATUS_AVAILABLE


def test_p1_default_name_and_p3_default_main_project(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, _ = _source_backup(coordinated, seed=10, sizes_mib=(4,))
    done = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    assert done.target_project_id == "cn-east-3_default"
    east = node(coordinated.channel(TARGET))
    replica = east.GetBackup(pb.GetBackupRequest(backup_id=done.replica_id))
    assert replica.name == f"manual_rep_from_{source.backup_id}"
    assert replica.project_id == "cn-east-3_default"
    # Not visible from the region's other project.
    code, _ = refusal(
        lambda: east.GetBackup(pb.GetBackupRequest(project_id=TARGET_DR, backup_id=done.replica_id))
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_r3_a_second_replication_to_the_same_region_is_refused_while_its_replica_exists(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    # The other direction of the default cluster: cn-east-3 to cn-north-4.
    east = node(coordinated.channel(TARGET))
    server = make_server(east, [4])
    write(east, server.server_id, 0, 0, seeded_bytes(20, 4 * MIB))
    east_backup = backup(east, server.server_id)
    to_north = replicated(coordinator, east_backup.backup_id, TARGET, SOURCE)
    assert to_north.target_region_id == SOURCE
    records = east.GetBackup(pb.GetBackupRequest(backup_id=east_backup.backup_id)).replications
    assert [r.target_region_id for r in records] == [SOURCE]
    code, details = refusal(lambda: replicate(coordinator, east_backup.backup_id, TARGET, SOURCE))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert details.startswith("R3")
    north = node(coordinated.channel(SOURCE))
    replicas = [b for b in all_backups(north) if b.origin.source_backup_id == east_backup.backup_id]
    assert len(replicas) == 1


def test_r3_two_concurrent_calls_give_exactly_one_job_and_one_replica(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, _ = _source_backup(coordinated, seed=30, sizes_mib=(32,))
    with ThreadPoolExecutor(max_workers=4) as pool:
        calls = [
            pool.submit(
                coordinator.ReplicateBackup,
                cpb.ReplicateBackupRequest(
                    source_region_id=SOURCE, backup_id=source.backup_id, target_region_id=TARGET
                ),
                timeout=30,
            )
            for _ in range(4)
        ]
        jobs: list[cpb.ReplicationJob] = []
        refusals: list[tuple[grpc.StatusCode, str]] = []
        for call in calls:
            try:
                jobs.append(call.result())
            except grpc.RpcError as exc:
                refusals.append((exc.code(), exc.details() or ""))
    assert len(jobs) == 1, refusals
    assert [c for c, _ in refusals] == [grpc.StatusCode.ALREADY_EXISTS] * 3
    assert all(d.startswith("R3") for _, d in refusals)
    follow(coordinator, jobs[0].job_id)
    east = node(coordinated.channel(TARGET))
    copies = [b for b in all_backups(east) if b.origin.source_backup_id == source.backup_id]
    assert len(copies) == 1


def test_r4a_after_the_replica_is_deleted_m1_may_replicate_again(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, hashes = _source_backup(coordinated, seed=40, sizes_mib=(8,))
    first = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    east = node(coordinated.channel(TARGET))
    east.DeleteBackup(pb.DeleteBackupRequest(backup_id=first.replica_id))
    second = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    assert second.replica_id != first.replica_id
    server = server_from_backup(east, second.replica_id)
    assert disk_sha256(east, server.server_id, 0) == hashes[0]


def test_idempotency_token_returns_the_same_job(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, _ = _source_backup(coordinated, seed=50, sizes_mib=(4,))
    first = replicate(coordinator, source.backup_id, SOURCE, TARGET, idempotency_token="retry-1")
    again = replicate(coordinator, source.backup_id, SOURCE, TARGET, idempotency_token="retry-1")
    assert again.job_id == first.job_id
    follow(coordinator, first.job_id)
    after = replicate(coordinator, source.backup_id, SOURCE, TARGET, idempotency_token="retry-1")
    assert after.job_id == first.job_id
    assert after.status == cpb.REPLICATION_JOB_STATUS_SUCCESS


def test_r2_a_replica_cannot_be_replicated_nor_restored_but_makes_images(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, hashes = _source_backup(coordinated, seed=60, sizes_mib=(4,))
    done = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    code, details = refusal(lambda: replicate(coordinator, done.replica_id, TARGET, SOURCE))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("R2"), details
    east = node(coordinated.channel(TARGET))
    code, details = refusal(
        lambda: east.RestoreBackup(pb.RestoreBackupRequest(backup_id=done.replica_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("R2"), details
    server = server_from_backup(east, done.replica_id)
    assert disk_sha256(east, server.server_id, 0) == hashes[0]


def test_r1c_a_backup_that_is_not_available_is_refused(tmp_path: Path) -> None:
    """A backup interrupted by a crash is `error` after the restart: not available, so not
    replicable. Frozen (SIGSTOP) right as CreateBackup answers, so it is surely mid-way."""
    with Cluster(write_cluster_config(tmp_path)) as cluster:
        cluster.start(coordinator=True)
        north = node(cluster.channel(SOURCE))
        server = make_server(north, [256])
        write(north, server.server_id, 0, 0, seeded_bytes(70, 256 * MIB))
        creating = north.CreateBackup(pb.CreateBackupRequest(server_id=server.server_id))
        cluster.node(SOURCE).pause()
        assert creating.status == pb.BACKUP_STATUS_CREATING
        cluster.node(SOURCE).kill()
        cluster.node(SOURCE).restart()
        north = node(cluster.channel(SOURCE))
        failed = north.GetBackup(pb.GetBackupRequest(backup_id=creating.backup_id))
        assert failed.status == pb.BACKUP_STATUS_ERROR
        coordinator = CoordinatorStub(cluster.coordinator_channel())
        code, details = refusal(lambda: replicate(coordinator, creating.backup_id, SOURCE, TARGET))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("R1c"), details


def test_r5_an_operator_switch_is_advertised_at_once_and_enforced_by_the_target(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    source, _ = _source_backup(coordinated, seed=80, sizes_mib=(4,))
    admin = RegionNodeAdminStub(coordinated.channel(TARGET))
    admin.SetReplicationCapability(pb.SetReplicationCapabilityRequest(accepts_replication=False))
    try:
        targets = coordinator.ListReplicationTargets(
            cpb.ListReplicationTargetsRequest(source_region_id=SOURCE), timeout=30
        ).targets
        assert TARGET not in [t.region_id for t in targets]
        code, details = refusal(lambda: replicate(coordinator, source.backup_id, SOURCE, TARGET))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("R5"), details
        # The node itself refuses a replica, whoever asks.
        internal = RegionNodeInternalStub(coordinated.channel(TARGET))
        header = pb.CreateReplicaHeader(
            name="r5",
            server_type=common_pb2.SERVER_TYPE_ECS,
            job_id="r5-probe",
            disks=[pb.BackupDisk(disk_index=0, size_bytes=MIB, system=True)],
            origin=pb.BackupOrigin(
                replicated=True, source_region_id=SOURCE, source_backup_id=source.backup_id
            ),
        )
        code, details = refusal(
            lambda: internal.CreateReplica(iter([pb.CreateReplicaRequest(header=header)]))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("R5"), details
    finally:
        admin.SetReplicationCapability(pb.SetReplicationCapabilityRequest(accepts_replication=True))
    targets = coordinator.ListReplicationTargets(
        cpb.ListReplicationTargetsRequest(source_region_id=SOURCE), timeout=30
    ).targets
    assert TARGET in [t.region_id for t in targets]
    code, details = refusal(
        lambda: replicate(coordinator, source.backup_id, SOURCE, NO_REPLICATION)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("R5"), details


def test_p4_a_replica_being_copied_is_visible_but_unusable(coordinated: Cluster) -> None:
    """The node's side of P4, driven as the coordinator drives it: a replica whose chunks have
    not all arrived is listed in its project as REPLICATING, and makes no image."""
    source, _ = _source_backup(coordinated, seed=90, sizes_mib=(4,))
    internal_north = RegionNodeInternalStub(coordinated.channel(SOURCE))
    internal_east = RegionNodeInternalStub(coordinated.channel(TARGET))
    parts = list(
        internal_north.GetBackupManifest(pb.GetBackupManifestRequest(backup_id=source.backup_id))
    )
    header = pb.CreateReplicaHeader(
        project_id=TARGET_DR,
        name="p4",
        server_type=source.server_type,
        disks=source.disks,
        job_id="p4-probe",
        origin=pb.BackupOrigin(
            replicated=True,
            source_region_id=SOURCE,
            source_backup_id=source.backup_id,
            way=common_pb2.REPLICATION_WAY_MANUAL,
        ),
    )
    replica = internal_east.CreateReplica(
        iter(
            [pb.CreateReplicaRequest(header=header)]
            + [pb.CreateReplicaRequest(manifest=p) for p in parts]
            + [manifest_end(parts)]
        )
    )
    east = node(coordinated.channel(TARGET))
    listed = [b for b in all_backups(east, TARGET_DR) if b.backup_id == replica.backup_id]
    assert [b.status for b in listed] == [pb.BACKUP_STATUS_REPLICATING]
    code, details = refusal(
        lambda: east.CreateImage(
            pb.CreateImageRequest(project_id=TARGET_DR, backup_id=replica.backup_id)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("P4"), details
    code, _ = refusal(
        lambda: internal_east.CompleteReplica(
            pb.CompleteReplicaRequest(replica_id=replica.backup_id)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert internal_east.RemoveReplica(
        pb.RemoveReplicaRequest(replica_id=replica.backup_id)
    ).removed
    assert not [b for b in all_backups(east, TARGET_DR) if b.backup_id == replica.backup_id]


def test_a_source_backup_being_replicated_cannot_be_deleted(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    """A hold keeps the source while a job copies it; it is released when the job ends."""
    source, _ = _source_backup(coordinated, seed=100, sizes_mib=(4,))
    internal = RegionNodeInternalStub(coordinated.channel(SOURCE))
    internal.HoldBackup(pb.HoldBackupRequest(backup_id=source.backup_id, job_id="hold-probe"))
    north = node(coordinated.channel(SOURCE))
    code, details = refusal(
        lambda: north.DeleteBackup(pb.DeleteBackupRequest(backup_id=source.backup_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "being replicated" in details
    internal.ReleaseBackup(pb.HoldBackupRequest(backup_id=source.backup_id, job_id="hold-probe"))
    done = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS
    north.DeleteBackup(pb.DeleteBackupRequest(backup_id=source.backup_id))


def test_r3_one_backup_replicated_to_two_target_regions_has_one_replica_in_each(
    tmp_path: Path,
) -> None:
    """Three replication-capable regions: one backup goes to both others, once each."""
    regions = [
        {
            "id": region,
            "name": region,
            "accepts_replication": True,
            "projects": [{"id": f"{region}_default", "account": "default", "main": True}],
        }
        for region in ("ap-southeast-1", "ap-southeast-2", "ap-southeast-3")
    ]
    with Cluster(write_cluster_config(tmp_path, regions=regions)) as cluster:
        cluster.start(coordinator=True)
        coordinator = CoordinatorStub(cluster.coordinator_channel())
        first = node(cluster.channel("ap-southeast-1"))
        server = make_server(first, [8])
        write(first, server.server_id, 0, 0, seeded_bytes(110, 8 * MIB))
        expected = disk_sha256(first, server.server_id, 0)
        source = backup(first, server.server_id)
        jobs = [
            replicate(coordinator, source.backup_id, "ap-southeast-1", target)
            for target in ("ap-southeast-2", "ap-southeast-3")
        ]
        for job in jobs:
            assert follow(coordinator, job.job_id)[-1].status == (
                cpb.REPLICATION_JOB_STATUS_SUCCESS
            )
        records = first.GetBackup(pb.GetBackupRequest(backup_id=source.backup_id)).replications
        assert sorted(r.target_region_id for r in records) == ["ap-southeast-2", "ap-southeast-3"]
        for target in ("ap-southeast-2", "ap-southeast-3"):
            stub = node(cluster.channel(target))
            (replica,) = [
                b for b in all_backups(stub) if b.origin.source_backup_id == source.backup_id
            ]
            copy = server_from_backup(stub, replica.backup_id)
            assert disk_sha256(stub, copy.server_id, 0) == expected
            code, details = refusal(
                lambda target=target: replicate(  # type: ignore[misc]
                    coordinator, source.backup_id, "ap-southeast-1", target
                )
            )
            assert code == grpc.StatusCode.ALREADY_EXISTS
            assert details.startswith("R3"), details
