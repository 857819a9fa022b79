"""Replication jobs (M1) under real faults: a region node or the coordinator killed with SIGKILL
half-way through a copy, a target region down for longer than the retry budget, eight copies at
once, and an incremental copy that sends only what changed. Each test runs its own cluster (three
region nodes and the coordinator, real processes) and checks the outcome against what was
written: the replica's image gives a server whose disk is byte-for-byte the source disk."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    all_backups,
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

SOURCE = "cn-north-4"
SOURCE_MAIN = "cn-north-4_default"
TARGET = "cn-east-3"
TARGET_MAIN = "cn-east-3_default"
TARGET_DR = "cn-east-3_dr"  # a second, non-main project of the default account (P3)

JOB_WAIT = 120.0  # bounded, and generous: another engineer's tests may share the two cores
FAST_POLL = 0.02  # to catch a job at a given point of its copy
POLL = 0.1
TEST_TIMEOUT = 300

SUCCESS = cpb.REPLICATION_JOB_STATUS_SUCCESS
FAILED = cpb.REPLICATION_JOB_STATUS_FAILED
REPLICATING = cpb.REPLICATION_JOB_STATUS_REPLICATING


@pytest.fixture
def coordinated(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own for the test: the default three regions and the coordinator."""
    with Cluster(write_cluster_config(tmp_path)) as running:
        running.start(coordinator=True)
        yield running


# --- helpers -----------------------------------------------------------------------------------


def coordinator(cluster: Cluster) -> CoordinatorStub:
    """A stub on the coordinator's current address (it changes when the coordinator restarts)."""
    return CoordinatorStub(cluster.coordinator_channel())


def replicate(
    cluster: Cluster,
    backup_id: str,
    source: str = SOURCE,
    target: str = TARGET,
    target_project_id: str = "",
) -> cpb.ReplicationJob:
    job: cpb.ReplicationJob = coordinator(cluster).ReplicateBackup(
        cpb.ReplicateBackupRequest(
            source_region_id=source,
            backup_id=backup_id,
            target_region_id=target,
            target_project_id=target_project_id,
        ),
        timeout=30,
    )
    return job


def get_job(cluster: Cluster, job_id: str) -> cpb.ReplicationJob:
    job: cpb.ReplicationJob = coordinator(cluster).GetReplicationJob(
        cpb.GetReplicationJobRequest(job_id=job_id), timeout=10
    )
    return job


def describe(job: cpb.ReplicationJob) -> str:
    p = job.progress
    return (
        f"job {job.job_id} {cpb.ReplicationJobStatus.Name(job.status)} attempts={job.attempts} "
        f"sent={p.bytes_sent} skipped={p.bytes_skipped} planned={p.bytes_planned} "
        f"replica={job.replica_id!r} reason={job.failure_reason!r}"
    )


def wait_job(
    cluster: Cluster,
    job_id: str,
    until: Callable[[cpb.ReplicationJob], bool],
    what: str,
    timeout: float = JOB_WAIT,
    interval: float = POLL,
) -> cpb.ReplicationJob:
    """Polls GetReplicationJob until `until(job)` holds, and returns that job; fails after
    `timeout` seconds naming `what` and the job's last state."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(cluster, job_id)
        if until(job):
            return job
        if time.monotonic() >= deadline:
            raise AssertionError(f"not {what} after {timeout:.0f}s: {describe(job)}")
        time.sleep(interval)


def wait_finished(cluster: Cluster, job_id: str, timeout: float = JOB_WAIT) -> cpb.ReplicationJob:
    return wait_job(cluster, job_id, lambda j: j.status in (SUCCESS, FAILED), "finished", timeout)


def wait_success(cluster: Cluster, job_id: str, timeout: float = JOB_WAIT) -> cpb.ReplicationJob:
    job = wait_finished(cluster, job_id, timeout)
    assert job.status == SUCCESS, describe(job)
    return job


def source_backup(
    cluster: Cluster, region: str, data: bytes, project_id: str = ""
) -> tuple[pb.Server, pb.Backup]:
    """A server in `region` whose only (system) disk holds `data`, and an available backup."""
    stub = node(cluster.channel(region))
    server = make_server(stub, [len(data) // MIB], project_id=project_id)
    assert write(stub, server.server_id, 0, 0, data, project_id=project_id) == len(data)
    return server, backup(stub, server.server_id, project_id=project_id)


def replica_disk_sha256(cluster: Cluster, region: str, project_id: str, replica_id: str) -> str:
    """The sha256 of the system disk of a new server made from an image of the replica."""
    stub = node(cluster.channel(region))
    server = server_from_backup(stub, replica_id, project_id)
    return disk_sha256(stub, server.server_id, 0, project_id)


def get_backup(cluster: Cluster, region: str, project_id: str, backup_id: str) -> pb.Backup:
    found: pb.Backup = node(cluster.channel(region)).GetBackup(
        pb.GetBackupRequest(project_id=project_id, backup_id=backup_id), timeout=30
    )
    return found


def assert_replica_of(
    replica: pb.Backup, source_region: str, source_backup_id: str, job_id: str
) -> None:
    assert replica.status == pb.BACKUP_STATUS_AVAILABLE, replica
    assert replica.origin.replicated
    assert replica.origin.source_region_id == source_region
    assert replica.origin.source_backup_id == source_backup_id
    assert replica.origin.way == common_pb2.REPLICATION_WAY_MANUAL
    assert replica.origin.replication_job_id == job_id


def replicas_of(
    cluster: Cluster, region: str, project_id: str, source_backup_id: str
) -> list[pb.Backup]:
    """The backups of a project that are replicas of the given source backup."""
    return [
        b
        for b in all_backups(node(cluster.channel(region)), project_id)
        if b.origin.replicated and b.origin.source_backup_id == source_backup_id
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(TEST_TIMEOUT)
def test_kill_9_target_half_way_job_completes_with_little_resent(coordinated: Cluster) -> None:
    data = seeded_bytes(1, 256 * MIB)
    _, source = source_backup(coordinated, SOURCE, data)
    job = replicate(coordinated, source.backup_id)

    # Progress is written at most every 0.5 s, so "half-way" is the first report at 40% or more.
    cut = wait_job(
        coordinated,
        job.job_id,
        lambda j: (
            j.status != REPLICATING
            or (
                j.progress.bytes_planned > 0
                and j.progress.bytes_sent * 5 >= j.progress.bytes_planned * 2
            )
        ),
        "40% copied",
        interval=FAST_POLL,
    )
    target = coordinated.node(TARGET)
    target.kill()
    assert cut.status == REPLICATING, f"the copy ended before the fault: {describe(cut)}"
    assert cut.progress.bytes_sent < cut.progress.bytes_planned, describe(cut)
    planned = cut.progress.bytes_planned
    assert planned == len(data)

    # How the coordinator counts bytes_sent across attempts: each attempt starts it again from
    # what the target holds beyond what it held at first (FindMissingChunks), then adds what it
    # relays. What the first attempt relayed but the target never committed (cut off by the kill)
    # is therefore dropped from the count, and the job's final bytes_sent alone cannot show what
    # was re-sent. So the total is measured in three honest pieces:
    #   sent_first: what the first attempt relayed, as it saved it when its stream failed (the
    #     job keeps that figure until a later attempt reaches the target again, which cannot
    #     happen while the target is down; a second attempt proves the first one has ended);
    #   held: what the target really kept, asked from the target itself (FindMissingChunks) while
    #     the coordinator is paused, so that nothing more reaches it before we ask;
    #   final bytes_sent - held: what the later attempt relayed on top of what the target held.
    after_cut = wait_job(
        coordinated,
        job.job_id,
        lambda j: j.attempts >= 2 or j.status != REPLICATING,
        "a second attempt",
    )
    assert after_cut.status == REPLICATING, describe(after_cut)
    assert after_cut.replica_id, describe(after_cut)
    assert after_cut.progress.bytes_skipped == 0, describe(after_cut)
    sent_first = after_cut.progress.bytes_sent
    assert cut.progress.bytes_sent <= sent_first < planned, describe(after_cut)

    coordinated.coordinator.pause()
    try:
        target.restart()
        missing = RegionNodeInternalStub(coordinated.channel(TARGET)).FindMissingChunks(
            pb.FindMissingChunksRequest(replica_id=after_cut.replica_id), timeout=30
        )
    finally:
        coordinated.coordinator.resume()
    held = missing.bytes_already_held
    assert missing.bytes_total == planned
    assert held <= sent_first, (held, sent_first)

    done = wait_success(coordinated, job.job_id)
    assert done.replica_id == after_cut.replica_id
    assert done.progress.bytes_planned == planned
    assert done.progress.bytes_skipped == 0
    assert done.progress.bytes_sent >= held, describe(done)
    sent_total = sent_first + (done.progress.bytes_sent - held)
    assert sent_total >= planned, (sent_first, held, done.progress.bytes_sent)
    assert sent_total < 1.5 * source.size_bytes, (
        f"{sent_total} bytes sent in all for a backup of {source.size_bytes}: "
        f"{sent_first} by the first attempt, of which the target kept {held}"
    )

    replica = get_backup(coordinated, TARGET, TARGET_MAIN, done.replica_id)
    assert_replica_of(replica, SOURCE, source.backup_id, job.job_id)
    assert replica_disk_sha256(coordinated, TARGET, TARGET_MAIN, done.replica_id) == sha256(data)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_kill_9_coordinator_mid_job_resumes(coordinated: Cluster) -> None:
    data = seeded_bytes(2, 256 * MIB)
    _, source = source_backup(coordinated, SOURCE, data)
    job = replicate(coordinated, source.backup_id)

    cut = wait_job(
        coordinated,
        job.job_id,
        lambda j: j.status != REPLICATING or j.progress.bytes_sent > 0,
        "copying",
        interval=FAST_POLL,
    )
    coordinated.coordinator.kill()
    assert cut.status == REPLICATING, f"the copy ended before the fault: {describe(cut)}"
    assert 0 < cut.progress.bytes_sent < cut.progress.bytes_planned, describe(cut)
    assert cut.replica_id

    coordinated.coordinator.restart()
    done = wait_success(coordinated, job.job_id)
    assert done.attempts >= 2, describe(done)
    assert done.replica_id == cut.replica_id  # the replica was resumed, not made again
    assert done.progress.bytes_planned == len(data)

    (replica,) = replicas_of(coordinated, TARGET, TARGET_MAIN, source.backup_id)
    assert replica.backup_id == done.replica_id
    assert_replica_of(replica, SOURCE, source.backup_id, job.job_id)
    assert replica_disk_sha256(coordinated, TARGET, TARGET_MAIN, done.replica_id) == sha256(data)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_target_down_longer_than_retry_budget_fails_cleanly_then_cleans_up(
    tmp_path: Path,
) -> None:
    config = write_cluster_config(
        tmp_path, coordinator={"retry_budget_seconds": 3.0, "cleanup_interval_seconds": 1.0}
    )
    with Cluster(config) as cluster:
        cluster.start(coordinator=True)
        data = seeded_bytes(3, 256 * MIB)
        _, source = source_backup(cluster, SOURCE, data)
        job = replicate(cluster, source.backup_id)

        # Early in the job, but once the replica exists there: it is what must be cleaned up.
        early = wait_job(
            cluster,
            job.job_id,
            lambda j: j.status != REPLICATING or bool(j.replica_id),
            "a replica made in the target region",
            interval=FAST_POLL,
        )
        target = cluster.node(TARGET)
        target.kill()
        assert early.status == REPLICATING, f"the copy ended before the fault: {describe(early)}"
        replica_id = early.replica_id

        failed = wait_finished(cluster, job.job_id, timeout=60)
        assert failed.status == FAILED, describe(failed)
        assert TARGET in failed.failure_reason, failed.failure_reason
        assert failed.replica_id == replica_id

        record = {
            r.job_id: r for r in get_backup(cluster, SOURCE, "", source.backup_id).replications
        }[job.job_id]
        assert record.status == pb.REPLICATION_RECORD_STATUS_FAILED, record
        assert record.target_region_id == TARGET
        assert record.failure_reason, record

        # The coordinator is held while the target comes back, to see that the failed job did
        # leave its replica there (unusable, still REPLICATING): else the clean-up would prove
        # nothing. Then it is let go, and its clean-up loop must remove the leftover.
        cluster.coordinator.pause()
        try:
            target.restart()
            leftovers = replicas_of(cluster, TARGET, TARGET_MAIN, source.backup_id)
        finally:
            cluster.coordinator.resume()
        assert [(b.backup_id, b.status) for b in leftovers] == [
            (replica_id, pb.BACKUP_STATUS_REPLICATING)
        ]
        wait_until(
            lambda: not replicas_of(cluster, TARGET, TARGET_MAIN, source.backup_id),
            timeout=60,
            what=f"leftover replica {replica_id} removed from {TARGET}",
            interval=0.25,
        )
        code, _ = refusal(lambda: get_backup(cluster, TARGET, TARGET_MAIN, replica_id))
        assert code == grpc.StatusCode.NOT_FOUND

        again = replicate(cluster, source.backup_id)
        assert again.job_id != job.job_id
        done = wait_success(cluster, again.job_id)
        (replica,) = replicas_of(cluster, TARGET, TARGET_MAIN, source.backup_id)
        assert replica.backup_id == done.replica_id
        assert_replica_of(replica, SOURCE, source.backup_id, again.job_id)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_eight_replications_at_once_all_complete_byte_identical(coordinated: Cluster) -> None:
    # (source region, target region, target project); "" is the target region's main project.
    plan = [
        (SOURCE, TARGET, ""),
        (SOURCE, TARGET, ""),
        (SOURCE, TARGET, TARGET_DR),
        (SOURCE, TARGET, TARGET_DR),
        (TARGET, SOURCE, ""),
        (TARGET, SOURCE, ""),
        (TARGET, SOURCE, ""),
        (TARGET, SOURCE, ""),
    ]
    main_project = {SOURCE: SOURCE_MAIN, TARGET: TARGET_MAIN}
    sources: list[tuple[pb.Backup, str]] = []
    for seed, (region, _, _) in enumerate(plan, start=100):
        data = seeded_bytes(seed, 32 * MIB)
        _, made = source_backup(coordinated, region, data)
        sources.append((made, sha256(data)))
    assert len({digest for _, digest in sources}) == len(plan)

    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        jobs = list(
            pool.map(
                lambda item: replicate(
                    coordinated, item[0][0].backup_id, item[1][0], item[1][1], item[1][2]
                ),
                zip(sources, plan, strict=True),
            )
        )
    assert len({j.job_id for j in jobs}) == len(plan)

    for job, (made, digest), (region, target, project) in zip(jobs, sources, plan, strict=True):
        done = wait_success(coordinated, job.job_id)
        project = project or main_project[target]
        assert done.target_project_id == project
        replica = get_backup(coordinated, target, project, done.replica_id)
        assert_replica_of(replica, region, made.backup_id, job.job_id)
        assert replica.project_id == project
        assert replica_disk_sha256(coordinated, target, project, done.replica_id) == digest

    peaks = {
        "coordinator": coordinated.coordinator.peak_rss_mb(),
        SOURCE: coordinated.node(SOURCE).peak_rss_mb(),
        TARGET: coordinated.node(TARGET).peak_rss_mb(),
    }
    assert all(peak < 200 for peak in peaks.values()), peaks


@pytest.mark.timeout(TEST_TIMEOUT)
def test_incremental_replication_sends_only_changed_chunks(coordinated: Cluster) -> None:
    data = bytearray(seeded_bytes(5, 64 * MIB))
    server, first = source_backup(coordinated, SOURCE, bytes(data))
    wait_success(coordinated, replicate(coordinated, first.backup_id).job_id)

    stub = node(coordinated.channel(SOURCE))
    extents = [(7 * MIB, seeded_bytes(51, MIB)), (40 * MIB, seeded_bytes(52, MIB))]
    for offset, extent in extents:
        assert write(stub, server.server_id, 0, offset, extent) == len(extent)
        data[offset : offset + len(extent)] = extent
    rewritten = sum(len(extent) for _, extent in extents)
    second = backup(stub, server.server_id)

    job = wait_success(coordinated, replicate(coordinated, second.backup_id).job_id)
    p = job.progress
    assert p.bytes_planned == len(data)
    assert rewritten <= p.bytes_sent <= 2.5 * rewritten, describe(job)
    assert p.bytes_skipped == p.bytes_planned - p.bytes_sent, describe(job)

    replica = get_backup(coordinated, TARGET, TARGET_MAIN, job.replica_id)
    assert_replica_of(replica, SOURCE, second.backup_id, job.job_id)
    assert replica_disk_sha256(coordinated, TARGET, TARGET_MAIN, job.replica_id) == sha256(
        bytes(data)
    )
