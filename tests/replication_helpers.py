"""Helpers for replication tests: start an M1 replication and follow its job to the end."""

from __future__ import annotations

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub

WAIT_SECONDS = 180.0
ENDED = (cpb.REPLICATION_JOB_STATUS_SUCCESS, cpb.REPLICATION_JOB_STATUS_FAILED)


def replicate(
    stub: CoordinatorStub,
    backup_id: str,
    source_region_id: str,
    target_region_id: str,
    **fields: str,
) -> cpb.ReplicationJob:
    job: cpb.ReplicationJob = stub.ReplicateBackup(
        cpb.ReplicateBackupRequest(
            source_region_id=source_region_id,
            backup_id=backup_id,
            target_region_id=target_region_id,
            **fields,
        ),
        timeout=30,
    )
    return job


def follow(stub: CoordinatorStub, job_id: str) -> list[cpb.ReplicationJob]:
    """Every update WatchReplicationJob sends until the job ends."""
    updates = list(
        stub.WatchReplicationJob(cpb.GetReplicationJobRequest(job_id=job_id), timeout=WAIT_SECONDS)
    )
    assert updates and updates[-1].status in ENDED, updates[-1:]
    return updates


def replicated(
    stub: CoordinatorStub,
    backup_id: str,
    source_region_id: str,
    target_region_id: str,
    **fields: str,
) -> cpb.ReplicationJob:
    """Replicates and waits: the job must succeed."""
    job = replicate(stub, backup_id, source_region_id, target_region_id, **fields)
    done = follow(stub, job.job_id)[-1]
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
    return done


def advance_to_hour(channel: object, hour: int) -> None:
    """Simulated clock: moves it to the next `hour`:00 UTC, so that a daily schedule's first
    runs fall the same way whatever the time of day the test starts at (a policy made between
    its backup hour and its replication hour would first replicate nothing)."""
    from datetime import UTC, timedelta

    from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub

    coordinator = CoordinatorStub(channel)
    now = coordinator.GetClock(cpb.GetClockRequest(), timeout=30).now.ToDatetime(tzinfo=UTC)
    target = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    request = cpb.AdvanceClockRequest()
    request.to.FromDatetime(target)
    CoordinatorAdminStub(channel).AdvanceClock(request, timeout=600)
