"""Issue 11, item 4: the source's replication record follows its replica. A replica deleted in
the target region (by its user) makes the source backup's record say `replica_deleted` within
seconds (the node records the deletion in the transaction that deletes it, the coordinator
learns it with ListDeletedReplicas), `csbs backup show` lists it as deleted, and R4a keeps
working from it. Real region nodes and a real coordinator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub, RegionNodeStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    backup,
    make_server,
    node,
    refusal,
    seeded_bytes,
    wait_until,
    write,
)
from tests.replication_helpers import replicated
from tests.test_cli import cluster_env, csbs

pytestmark = pytest.mark.timeout(180)

SOURCE = "cn-north-4"
TARGET = "cn-east-3"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path: Path = write_cluster_config(tmp_path_factory.mktemp("deleted"))
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _record(north: RegionNodeStub, backup_id: str, job_id: str) -> pb.ReplicationRecord:
    answer = north.GetBackup(pb.GetBackupRequest(backup_id=backup_id), timeout=10)
    records: list[pb.ReplicationRecord] = [r for r in answer.replications if r.job_id == job_id]
    assert len(records) == 1, answer
    return records[0]


def test_a_replica_deleted_in_its_region_is_marked_deleted_on_its_source_within_seconds(
    cluster: Cluster,
) -> None:
    coordinator = CoordinatorStub(cluster.coordinator_channel())
    north = node(cluster.channel(SOURCE))
    east = node(cluster.channel(TARGET))
    server = make_server(north, [8])
    write(north, server.server_id, 0, 0, seeded_bytes(41, 4 * MIB))
    source = backup(north, server.server_id)
    first = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    assert not _record(north, source.backup_id, first.job_id).replica_deleted

    east.DeleteBackup(pb.DeleteBackupRequest(backup_id=first.replica_id), timeout=30)
    wait_until(
        lambda: _record(north, source.backup_id, first.job_id).replica_deleted,
        10,
        "marked replica_deleted on the source backup",
        interval=0.2,
    )
    record = _record(north, source.backup_id, first.job_id)
    assert record.status == pb.REPLICATION_RECORD_STATUS_SUCCESS, record
    job = coordinator.GetReplicationJob(cpb.GetReplicationJobRequest(job_id=first.job_id))
    assert job.replica_deleted and job.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, job
    shown = csbs(cluster_env(cluster), "backup", "show", source.backup_id).stdout
    assert f"{first.replica_id} (deleted)" in shown, shown

    # R4a from it: a manual replication may copy the backup there again; the new record is
    # not deleted, the old one stays so.
    second = replicated(coordinator, source.backup_id, SOURCE, TARGET)
    assert second.replica_id != first.replica_id
    assert not _record(north, source.backup_id, second.job_id).replica_deleted
    assert _record(north, source.backup_id, first.job_id).replica_deleted


def test_list_deleted_replicas_names_each_replica_a_user_deleted_once_in_order(
    cluster: Cluster,
) -> None:
    """The node's side of it, RegionNodeInternal.ListDeletedReplicas: each deleted replica once,
    with the job that made it and its source, after the seq the caller gives; a bad page size
    is INVALID_ARGUMENT naming the field."""
    coordinator = CoordinatorStub(cluster.coordinator_channel())
    north = node(cluster.channel(SOURCE))
    east = node(cluster.channel(TARGET))
    internal = RegionNodeInternalStub(cluster.channel(TARGET))
    start = internal.ListDeletedReplicas(pb.ListDeletedReplicasRequest(), timeout=10).last_seq
    server = make_server(north, [4])
    write(north, server.server_id, 0, 0, seeded_bytes(42, 2 * MIB))
    sources = [backup(north, server.server_id) for _ in range(2)]
    jobs = [replicated(coordinator, b.backup_id, SOURCE, TARGET) for b in sources]
    for job in jobs:
        east.DeleteBackup(pb.DeleteBackupRequest(backup_id=job.replica_id), timeout=30)

    answer = internal.ListDeletedReplicas(
        pb.ListDeletedReplicasRequest(after_seq=start), timeout=10
    )
    assert [
        (d.replica_id, d.job_id, d.source_region_id, d.source_backup_id) for d in answer.replicas
    ] == [(j.replica_id, j.job_id, SOURCE, b.backup_id) for j, b in zip(jobs, sources, strict=True)]
    assert answer.last_seq == answer.replicas[-1].seq
    one = internal.ListDeletedReplicas(
        pb.ListDeletedReplicasRequest(after_seq=start, page_size=1), timeout=10
    )
    assert [d.replica_id for d in one.replicas] == [jobs[0].replica_id]
    rest = internal.ListDeletedReplicas(
        pb.ListDeletedReplicasRequest(after_seq=answer.last_seq), timeout=10
    )
    assert list(rest.replicas) == []
    code, details = refusal(
        lambda: internal.ListDeletedReplicas(
            pb.ListDeletedReplicasRequest(page_size=1001), timeout=10
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in details, details
