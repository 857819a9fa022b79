"""Region outages (issue 13) through real processes: an out region answers its users and the
coordinator UNAVAILABLE naming itself and the reason, ends running streams, says NOT_SERVING in
health and keeps its admin service up; the outage outlives a kill -9 until the operator brings
the region back; a region the config lists starts out; and a replication job into or out of a
region that goes out mid-copy resumes once it is back and makes a replica identical to its
source."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest

from csbs.auth import bearer
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub, RegionNodeInternalStub
from region_node.services.outage import CONFIG_REASON
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    backup,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    write,
)

REGION = "cn-east-3"
OTHER = "cn-north-4"
DEADLINE = 10.0
REASON = "rehearsal: the Shanghai site lost power"
OUT_SERVICES = ("", "csbs.v1.RegionNode", "csbs.v1.RegionNodeInternal")
UP_SERVICES = ("csbs.v1.RegionNodeAdmin", "csbs.v1.FaultInjection")

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(write_cluster_config(tmp_path)) as running:
        running.start()
        yield running


def set_outage(cluster: Cluster, region_id: str, out: bool, reason: str = "") -> pb.RegionOutage:
    outage: pb.RegionOutage = RegionNodeAdminStub(cluster.channel(region_id)).SetRegionOutage(
        pb.SetRegionOutageRequest(out=out, reason=reason), timeout=DEADLINE
    )
    return outage


def get_outage(cluster: Cluster, region_id: str = REGION) -> pb.RegionOutage:
    outage: pb.RegionOutage = RegionNodeAdminStub(cluster.channel(region_id)).GetRegionOutage(
        pb.GetRegionOutageRequest(), timeout=DEADLINE
    )
    return outage


def region_info(cluster: Cluster, region_id: str = REGION) -> common_pb2.RegionInfo:
    info: common_pb2.RegionInfo = node(cluster.channel(region_id)).GetRegionInfo(
        pb.GetRegionInfoRequest(), timeout=DEADLINE
    )
    return info


def assert_out(cluster: Cluster, reason: str) -> None:
    """Users and the coordinator get UNAVAILABLE naming the region and the reason; health says
    so; the admin service and fault injection still answer."""
    code, details = refusal(lambda: region_info(cluster))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details.startswith(f"region {REGION} is out: {reason}"), details
    code, details = refusal(
        lambda: RegionNodeInternalStub(cluster.channel(REGION)).ListDeletedReplicas(
            pb.ListDeletedReplicasRequest(), timeout=DEADLINE
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE and REGION in details
    for service in OUT_SERVICES:
        assert cluster.health(REGION, service) == "NOT_SERVING", service
    for service in UP_SERVICES:
        assert cluster.health(REGION, service) == "SERVING", service
    FaultInjectionStub(cluster.channel(REGION)).ListFaultRules(
        fpb.ListFaultRulesRequest(), timeout=DEADLINE
    )
    outage = get_outage(cluster)
    assert (outage.region_id, outage.out, outage.reason) == (REGION, True, reason)


def assert_in_service(cluster: Cluster) -> None:
    assert region_info(cluster).region_id == REGION
    for service in (*OUT_SERVICES, *UP_SERVICES):
        assert cluster.health(REGION, service) == "SERVING", service
    assert not get_outage(cluster).out


def test_an_out_region_answers_unavailable_naming_itself_and_keeps_its_admin_up(
    cluster: Cluster,
) -> None:
    assert not get_outage(cluster).out and not get_outage(cluster).HasField("since")
    outage = set_outage(cluster, REGION, True, REASON)
    assert outage.out and outage.reason == REASON and outage.since.seconds > 0
    assert_out(cluster, REASON)
    assert region_info(cluster, OTHER).region_id == OTHER  # other regions are untouched
    # Out again with a new reason: still out since it went out.
    again = set_outage(cluster, REGION, True, "still dark")
    assert again.since == outage.since and again.reason == "still dark"
    back = set_outage(cluster, REGION, False)
    assert (
        not back.out and back.reason == "" and back.since.ToDatetime() >= outage.since.ToDatetime()
    )
    assert_in_service(cluster)


def test_streams_already_running_end_unavailable_at_their_next_message(cluster: Cluster) -> None:
    stub = node(cluster.channel(REGION))
    server = make_server(stub, [256])
    reading = stub.ReadDisk(pb.ReadDiskRequest(server_id=server.server_id), timeout=60)
    received = len(next(reading).data)
    set_outage(cluster, REGION, True, REASON)
    with pytest.raises(grpc.RpcError) as ended:
        for message in reading:
            received += len(message.data)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"region {REGION} is out" in (ended.value.details() or "")
    assert received < 256 * MIB
    set_outage(cluster, REGION, False)

    # A client stream: its first message is taken, the one after the outage is refused.
    taken = threading.Event()

    def messages() -> Iterator[pb.WriteDiskRequest]:
        yield pb.WriteDiskRequest(server_id=server.server_id, data=seeded_bytes(1, MIB))
        # The server has the first message once the outage may start (the gate looks at each
        # message as it arrives); then the region goes out and the next one arrives.
        time.sleep(0.5)
        set_outage(cluster, REGION, True, REASON)
        taken.set()
        yield pb.WriteDiskRequest(server_id=server.server_id, offset=MIB, data=b"x" * MIB)

    code, details = refusal(lambda: stub.WriteDisk(messages(), timeout=60))
    assert taken.is_set()
    assert code == grpc.StatusCode.UNAVAILABLE and f"region {REGION} is out" in details


def test_an_outage_outlives_a_kill_9_until_the_operator_brings_the_region_back(
    cluster: Cluster,
) -> None:
    went_out = set_outage(cluster, REGION, True, REASON)
    cluster.node(REGION).kill()
    cluster.node(REGION).start()
    cluster.node(REGION).wait_ready()
    assert_out(cluster, REASON)
    assert get_outage(cluster).since == went_out.since
    set_outage(cluster, REGION, False)
    assert_in_service(cluster)
    cluster.node(REGION).kill()
    cluster.node(REGION).start()
    cluster.node(REGION).wait_ready()
    assert_in_service(cluster)


def test_a_region_the_config_lists_in_outages_starts_out(tmp_path: Path) -> None:
    config = write_cluster_config(tmp_path, faults={"outages": [REGION]})
    with Cluster(config) as running:
        running.start()
        assert_out(running, CONFIG_REASON)
        assert region_info(running, OTHER).region_id == OTHER
        set_outage(running, REGION, False)
        assert_in_service(running)


def test_bad_outage_requests_are_refused_naming_the_field(cluster: Cluster) -> None:
    admin = RegionNodeAdminStub(cluster.channel(REGION))

    def set_with(request: pb.SetRegionOutageRequest) -> pb.RegionOutage:
        outage: pb.RegionOutage = admin.SetRegionOutage(request, timeout=DEADLINE)
        return outage

    for request in (
        pb.SetRegionOutageRequest(out=True, reason="r" * 256),
        pb.SetRegionOutageRequest(out=False, reason="why"),
    ):
        code, details = refusal(partial(set_with, request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("reason:"), details
    user = [bearer(ACCOUNT_TOKENS[DEFAULT_ACCOUNT])]
    code, _ = refusal(
        lambda: admin.SetRegionOutage(
            pb.SetRegionOutageRequest(out=True), metadata=user, timeout=DEADLINE
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert_in_service(cluster)


# --- replication across an outage ---------------------------------------------------------------

CHUNK = 64 * 1024  # 256 chunks (16 MiB) a WriteChunks call: a 48 MiB backup takes three
DATA = 48 * MIB
WRITE_CHUNKS_DELAY_MS = 1500  # each WriteChunks call waits: the copy lasts seconds


@pytest.fixture
def coordinated(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(write_cluster_config(tmp_path, chunk_size=CHUNK)) as running:
        running.start(coordinator=True)
        yield running


def get_job(cluster: Cluster, job_id: str) -> cpb.ReplicationJob:
    job: cpb.ReplicationJob = CoordinatorStub(cluster.coordinator_channel()).GetReplicationJob(
        cpb.GetReplicationJobRequest(job_id=job_id), timeout=DEADLINE
    )
    return job


def wait_job(
    cluster: Cluster, job_id: str, done: str, timeout: float = 120.0
) -> cpb.ReplicationJob:
    """Polls the job until it has sent bytes (`done` = "sending") or ended ("ended")."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(cluster, job_id)
        ended = job.status in (
            cpb.REPLICATION_JOB_STATUS_SUCCESS,
            cpb.REPLICATION_JOB_STATUS_FAILED,
        )
        if ended or (done == "sending" and job.progress.bytes_sent > 0):
            return job
        assert time.monotonic() < deadline, f"job {job_id} not {done}: {job}"
        time.sleep(0.02)


@pytest.mark.parametrize("out_region", [REGION, OTHER], ids=["target_out", "source_out"])
def test_a_replication_job_across_an_outage_resumes_and_makes_an_identical_replica(
    coordinated: Cluster, out_region: str
) -> None:
    source = node(coordinated.channel(OTHER))
    server = make_server(source, [DATA // MIB])
    data = seeded_bytes(13, DATA)
    write(source, server.server_id, 0, 0, data)
    source_backup = backup(source, server.server_id)
    FaultInjectionStub(coordinated.channel(REGION)).AddFaultRule(
        fpb.FaultRule(
            method="/csbs.v1.RegionNodeInternal/WriteChunks", delay_ms=WRITE_CHUNKS_DELAY_MS
        ),
        timeout=DEADLINE,
    )
    job = CoordinatorStub(coordinated.coordinator_channel()).ReplicateBackup(
        cpb.ReplicateBackupRequest(
            source_region_id=OTHER, backup_id=source_backup.backup_id, target_region_id=REGION
        ),
        timeout=30,
    )
    sending = wait_job(coordinated, job.job_id, "sending")
    assert sending.status == cpb.REPLICATION_JOB_STATUS_REPLICATING, sending
    set_outage(coordinated, out_region, True, REASON)
    time.sleep(3.0)  # the job's attempts meet the outage, and retry
    during = get_job(coordinated, job.job_id)
    assert during.status == cpb.REPLICATION_JOB_STATUS_REPLICATING, during
    assert during.progress.bytes_sent < DATA, during
    set_outage(coordinated, out_region, False)

    done = wait_job(coordinated, job.job_id, "ended")
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
    assert done.attempts > 1, done
    # Resumed, not restarted: the whole backup crossed about once.
    assert done.progress.bytes_sent <= DATA + 16 * MIB, done.progress
    target = node(coordinated.channel(REGION))
    copy = server_from_backup(target, done.replica_id)
    assert disk_sha256(target, copy.server_id, 0) == hashlib.sha256(data).hexdigest()
