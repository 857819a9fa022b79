"""Links between regions (issue 13): bandwidth and latency in simulated time (exact: a transfer
takes the simulated seconds its bytes need on the link), a cut link mid-job (the job keeps its
half copy, retries on the cluster clock, resumes when the link is restored, fails when its
simulated budget runs out), the same in wall time, and the operator's calls: set, list, clear,
refused to a user, kept across a coordinator crash, and the config file's `[[links]]`."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from csbs.config import ConfigError, load_cluster_config
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from tests.harness import DEFAULT_ACCOUNT, Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    backup,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    wait_until,
    write,
)
from tests.replication_helpers import follow, replicate

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
CHUNK = 64 * 1024
RATE = MIB  # bytes a second on the limited link
DATA = 4 * MIB  # what each test's backup holds: 4 simulated seconds on the link
BUDGET = 300  # simulated seconds a job keeps retrying a cut link

pytestmark = pytest.mark.timeout(300)


def _operator(cluster: Cluster) -> CoordinatorAdminStub:
    """The admin calls of this channel carry the operator credential."""
    return CoordinatorAdminStub(cluster.coordinator_channel())


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path = write_cluster_config(
        tmp_path_factory.mktemp("links"),
        chunk_size=CHUNK,
        simulated_clock=True,
        coordinator={"simulated_retry_budget_seconds": BUDGET},
    )
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _now(admin: CoordinatorAdminStub, cluster: Cluster) -> datetime:
    state = CoordinatorStub(cluster.coordinator_channel()).GetClock(cpb.GetClockRequest())
    now: datetime = state.now.ToDatetime(tzinfo=UTC)
    return now


def _advance(admin: CoordinatorAdminStub, seconds: float) -> datetime:
    state = admin.AdvanceClock(cpb.AdvanceClockRequest(by_seconds=int(seconds)), timeout=300)
    now: datetime = state.now.ToDatetime(tzinfo=UTC)
    return now


def _set_link(admin: CoordinatorAdminStub, **fields: object) -> cpb.Link:
    link: cpb.Link = admin.SetLink(
        cpb.SetLinkRequest(
            link=cpb.Link(source_region_id=SOURCE, target_region_id=TARGET, **fields)  # type: ignore[arg-type]
        ),
        timeout=30,
    )
    return link


@contextlib.contextmanager
def _link_set(cluster: Cluster, **fields: object) -> Iterator[CoordinatorAdminStub]:
    """The link SOURCE -> TARGET set for a test, and cleared after it whatever happens."""
    admin = _operator(cluster)
    _set_link(admin, **fields)
    try:
        yield admin
    finally:
        admin.ClearLink(cpb.ClearLinkRequest(source_region_id=SOURCE, target_region_id=TARGET))


def _backup_of(cluster: Cluster, seed: int, size: int = DATA) -> tuple[str, str]:
    """A backup of a server holding `size` seeded bytes, and the disk's SHA-256."""
    north = node(cluster.channel(SOURCE))
    server = make_server(north, [size // MIB])
    write(north, server.server_id, 0, 0, seeded_bytes(seed, size))
    made = backup(north, server.server_id)
    assert made.status == pb.BACKUP_STATUS_AVAILABLE
    return made.backup_id, disk_sha256(north, server.server_id, 0)


def _job(cluster: Cluster, job_id: str) -> cpb.ReplicationJob:
    coordinator = CoordinatorStub(cluster.coordinator_channel())
    job: cpb.ReplicationJob = coordinator.GetReplicationJob(
        cpb.GetReplicationJobRequest(job_id=job_id), timeout=30
    )
    return job


def _copy_is_identical(cluster: Cluster, job: cpb.ReplicationJob, sha256: str) -> None:
    east = node(cluster.channel(TARGET))
    copy = server_from_backup(east, job.replica_id)
    assert disk_sha256(east, copy.server_id, 0) == sha256


def _seconds(a: Timestamp, b: datetime) -> float:
    return (a.ToDatetime(tzinfo=UTC) - b).total_seconds()


def test_a_transfer_takes_the_simulated_time_its_bytes_need_on_the_link(simulated: Cluster) -> None:
    with _link_set(simulated, bandwidth_bytes_per_second=RATE) as admin:
        backup_id, sha256 = _backup_of(simulated, seed=1)
        coordinator = CoordinatorStub(simulated.coordinator_channel())
        started = _now(admin, simulated)
        job = replicate(coordinator, backup_id, SOURCE, TARGET)

        # However fast this machine is, nothing moves until the clock does: about a second of
        # the link's bandwidth (one batch) is what the job may have sent.
        time.sleep(1.0)
        early = _job(simulated, job.job_id)
        assert early.status == cpb.REPLICATION_JOB_STATUS_REPLICATING
        assert early.progress.bytes_sent <= RATE + CHUNK

        half = _advance(admin, DATA / RATE / 2)
        midway = _job(simulated, job.job_id)
        assert midway.status == cpb.REPLICATION_JOB_STATUS_REPLICATING
        assert midway.progress.bytes_planned == DATA
        # Half the bytes have crossed at half the time (one batch of a second may be in flight).
        assert DATA / 2 - CHUNK <= midway.progress.bytes_sent <= DATA / 2 + RATE, midway.progress
        assert _seconds(midway.updated_at, started) <= (half - started).total_seconds()

        _advance(admin, 60)
        done = _job(simulated, job.job_id)
        assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
        assert done.progress.bytes_sent == DATA
        # Exactly the link's time (the wire carries a few bytes per chunk beyond the data).
        took = _seconds(done.finished_at, started)
        assert DATA / RATE <= took <= DATA / RATE * 1.02, took
        _copy_is_identical(simulated, done, sha256)


def test_a_cut_at_half_way_keeps_the_half_copy_and_resumes_when_restored(
    simulated: Cluster,
) -> None:
    with _link_set(simulated, bandwidth_bytes_per_second=RATE) as admin:
        backup_id, sha256 = _backup_of(simulated, seed=2)
        coordinator = CoordinatorStub(simulated.coordinator_channel())
        job = replicate(coordinator, backup_id, SOURCE, TARGET)
        _advance(admin, DATA / RATE / 2)
        _set_link(admin, bandwidth_bytes_per_second=RATE, cut=True)

        _advance(admin, 120)  # within the budget: retrying on the cluster clock
        cut = _job(simulated, job.job_id)
        assert cut.status == cpb.REPLICATION_JOB_STATUS_REPLICATING, cut.failure_reason
        assert cut.attempts >= 4  # 1, 2, 4, 8 ... simulated seconds apart
        assert DATA / 2 - CHUNK <= cut.progress.bytes_sent < DATA, cut.progress

        restored = _set_link(admin, bandwidth_bytes_per_second=RATE, cut=False)
        assert not restored.cut
        restored_at = _now(admin, simulated)
        _advance(admin, 120)
        done = _job(simulated, job.job_id)
        assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
        # Only what was missing crossed after the link came back.
        assert _seconds(done.finished_at, restored_at) < DATA / RATE / 2 + 61
        assert done.progress.bytes_sent == DATA
        _copy_is_identical(simulated, done, sha256)


def test_a_cut_longer_than_the_simulated_budget_fails_the_job_naming_the_link(
    simulated: Cluster,
) -> None:
    with _link_set(simulated, bandwidth_bytes_per_second=RATE) as admin:
        backup_id, _ = _backup_of(simulated, seed=3)
        coordinator = CoordinatorStub(simulated.coordinator_channel())
        job = replicate(coordinator, backup_id, SOURCE, TARGET)
        _advance(admin, 1)
        _set_link(admin, bandwidth_bytes_per_second=RATE, cut=True)
        _advance(admin, BUDGET * 3)
        failed = _job(simulated, job.job_id)
        assert failed.status == cpb.REPLICATION_JOB_STATUS_FAILED
        assert f"link {SOURCE} -> {TARGET}" in failed.failure_reason
        assert "cut" in failed.failure_reason
        assert f"{BUDGET} simulated seconds" in failed.failure_reason
        # A failed job leaves nothing in the target region.
        east = node(simulated.channel(TARGET))
        code, _ = refusal(lambda: east.GetBackup(pb.GetBackupRequest(backup_id=failed.replica_id)))
        assert code == grpc.StatusCode.NOT_FOUND


def test_latency_adds_simulated_time_to_every_call_across_the_link(simulated: Cluster) -> None:
    with _link_set(simulated, latency_ms=2000) as admin:
        backup_id, sha256 = _backup_of(simulated, seed=4, size=MIB)
        coordinator = CoordinatorStub(simulated.coordinator_channel())
        started = _now(admin, simulated)
        job = replicate(coordinator, backup_id, SOURCE, TARGET)
        time.sleep(0.5)
        assert _job(simulated, job.job_id).status == cpb.REPLICATION_JOB_STATUS_REPLICATING
        _advance(admin, 60)
        done = _job(simulated, job.job_id)
        assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
        # Create the replica, find what it lacks, one batch, find again, complete: five calls.
        assert _seconds(done.finished_at, started) == pytest.approx(10.0, abs=0.01)
        _copy_is_identical(simulated, done, sha256)


def test_links_are_set_listed_and_cleared_by_the_operator_only(simulated: Cluster) -> None:
    admin = _operator(simulated)
    link = _set_link(admin, bandwidth_bytes_per_second=12_500_000, latency_ms=30)
    assert (link.bandwidth_bytes_per_second, link.latency_ms, link.cut) == (12_500_000, 30, False)
    listed = admin.ListLinks(cpb.ListLinksRequest()).links
    assert [(k.source_region_id, k.target_region_id) for k in listed] == [(SOURCE, TARGET)]
    assert admin.ClearLink(
        cpb.ClearLinkRequest(source_region_id=SOURCE, target_region_id=TARGET)
    ).cleared
    assert not admin.ClearLink(
        cpb.ClearLinkRequest(source_region_id=SOURCE, target_region_id=TARGET)
    ).cleared
    assert list(admin.ListLinks(cpb.ListLinksRequest()).links) == []

    code, message = refusal(lambda: _set_link(admin, latency_ms=10**7))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "link.latency_ms" in message
    code, message = refusal(
        lambda: admin.SetLink(
            cpb.SetLinkRequest(link=cpb.Link(source_region_id=SOURCE, target_region_id=SOURCE))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "link.target_region_id" in message
    code, message = refusal(
        lambda: admin.SetLink(
            cpb.SetLinkRequest(link=cpb.Link(source_region_id=SOURCE, target_region_id="nowhere"))
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "nowhere" in message
    code, message = refusal(lambda: admin.SetLink(cpb.SetLinkRequest(link=cpb.Link())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "link.source_region_id" in message

    bare = CoordinatorAdminStub(simulated.coordinator_channel(account=None))
    user = simulated.credentials_for(DEFAULT_ACCOUNT)
    code, _ = refusal(lambda: bare.ListLinks(cpb.ListLinksRequest(), metadata=user))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_cut_link_stays_cut_across_a_coordinator_crash_and_the_config_sets_links(
    tmp_path: Path,
) -> None:
    path = write_cluster_config(tmp_path, chunk_size=CHUNK)
    with path.open("a", encoding="utf-8") as config:
        config.write(
            f'\n[[links]]\nsource = "{TARGET}"\ntarget = "{SOURCE}"\n'
            'bandwidth = "100 Mbit/s"\nlatency_ms = 20\n'
        )
    with Cluster(path) as cluster:
        cluster.start(coordinator=True)
        admin = _operator(cluster)
        (configured,) = admin.ListLinks(cpb.ListLinksRequest()).links
        assert (configured.source_region_id, configured.target_region_id) == (TARGET, SOURCE)
        assert (configured.bandwidth_bytes_per_second, configured.latency_ms) == (12_500_000, 20)

        _set_link(admin, cut=True)
        cluster.coordinator.kill()
        cluster.coordinator.restart()
        admin = _operator(cluster)
        links = {
            (k.source_region_id, k.target_region_id): k
            for k in admin.ListLinks(cpb.ListLinksRequest(), timeout=30).links
        }
        assert links[(SOURCE, TARGET)].cut
        assert links[(TARGET, SOURCE)].bandwidth_bytes_per_second == 12_500_000


def test_wall_time_a_cut_link_mid_job_is_retried_and_resumes_when_restored(
    tmp_path: Path,
) -> None:
    path = write_cluster_config(tmp_path, chunk_size=CHUNK)
    with Cluster(path) as cluster:
        cluster.start(coordinator=True)
        admin = _operator(cluster)
        _set_link(admin, bandwidth_bytes_per_second=RATE)
        backup_id, sha256 = _backup_of(cluster, seed=5)
        coordinator = CoordinatorStub(cluster.coordinator_channel())
        job = replicate(coordinator, backup_id, SOURCE, TARGET)
        wait_until(lambda: _job(cluster, job.job_id).progress.bytes_sent > 0, 60, "sending")
        _set_link(admin, bandwidth_bytes_per_second=RATE, cut=True)
        wait_until(lambda: _job(cluster, job.job_id).attempts >= 3, 60, "retrying")
        cut = _job(cluster, job.job_id)
        assert cut.status == cpb.REPLICATION_JOB_STATUS_REPLICATING
        assert cut.progress.bytes_sent < DATA
        _set_link(admin, bandwidth_bytes_per_second=0, cut=False)
        done = follow(coordinator, job.job_id)[-1]
        assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
        _copy_is_identical(cluster, done, sha256)


def test_an_injected_fault_is_retried_on_the_cluster_clock_in_simulated_mode(
    simulated: Cluster,
) -> None:
    """A fault rule's failure says it is the simulated world's: the job waits for it on the
    cluster clock (nothing happens until the clock moves), like a cut link."""
    faults = FaultInjectionStub(simulated.channel(TARGET))
    faults.AddFaultRule(
        fpb.FaultRule(method="*/FindMissingChunks", code="UNAVAILABLE", count=5), timeout=30
    )
    try:
        backup_id, sha256 = _backup_of(simulated, seed=6, size=MIB)
        coordinator = CoordinatorStub(simulated.coordinator_channel())
        job = replicate(coordinator, backup_id, SOURCE, TARGET)
        time.sleep(2.0)  # the client's own quick retries, then the job waits for the clock
        waiting = _job(simulated, job.job_id)
        assert waiting.status == cpb.REPLICATION_JOB_STATUS_REPLICATING
        assert waiting.attempts == 1
        _advance(_operator(simulated), 30)
        done = _job(simulated, job.job_id)
        assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
        assert done.attempts == 2
        _copy_is_identical(simulated, done, sha256)
    finally:
        faults.ClearFaultRules(fpb.ClearFaultRulesRequest(), timeout=30)


def test_a_transfer_of_repeated_chunks_ends_when_its_distinct_bytes_have_crossed(
    simulated: Cluster,
) -> None:
    """4 MiB of one 64 KiB chunk repeated: one chunk crosses, and the job ends when it has
    (its end is not the 4 MiB the manifest names)."""
    with _link_set(simulated, bandwidth_bytes_per_second=RATE) as admin:
        north = node(simulated.channel(SOURCE))
        server = make_server(north, [DATA // MIB])
        write(north, server.server_id, 0, 0, seeded_bytes(7, CHUNK) * (DATA // CHUNK))
        made = backup(north, server.server_id)
        coordinator = CoordinatorStub(simulated.coordinator_channel())
        started = _now(admin, simulated)
        job = replicate(coordinator, made.backup_id, SOURCE, TARGET)
        time.sleep(1.0)
        _advance(admin, 60)
        done = _job(simulated, job.job_id)
        assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
        assert _seconds(done.finished_at, started) <= 2 * CHUNK / RATE
        _copy_is_identical(simulated, done, disk_sha256(north, server.server_id, 0))


def test_recovery_points_refuse_a_range_that_ends_before_it_starts(simulated: Cluster) -> None:
    coordinator = CoordinatorStub(simulated.coordinator_channel())
    request = cpb.GetRecoveryPointsRequest()
    now = _now(_operator(simulated), simulated)
    getattr(request, "from").FromDatetime(now)
    request.to.FromDatetime(now.replace(year=now.year - 1))
    code, message = refusal(lambda: coordinator.GetRecoveryPoints(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("to: ")


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('bandwith = "1 MB/s"', "links[0].bandwith: unknown key"),
        ('bandwidth = "fast"', "links[0].bandwidth"),
        ("latency_ms = -1", "links[0].latency_ms"),
        ('target = "nowhere"', "links[0].target: unknown region"),
    ],
)
def test_a_bad_link_in_the_config_names_its_key(tmp_path: Path, line: str, named: str) -> None:
    path = write_cluster_config(tmp_path)
    target = "" if line.startswith("target") else f'target = "{TARGET}"\n'
    with path.open("a", encoding="utf-8") as config:
        config.write(f'\n[[links]]\nsource = "{SOURCE}"\n{target}{line}\n')
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_cluster_config(path)
