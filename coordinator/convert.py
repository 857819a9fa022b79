"""Domain objects to and from csbs.v1 protobuf messages: the only place that knows both."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator import models
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as pb


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _instant(message: pb.ListReplicationJobsRequest, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    ts: Timestamp = getattr(message, field)
    return ts.ToDatetime(tzinfo=UTC)


def target_to_proto(target: models.ReplicationTarget) -> pb.ReplicationTarget:
    return pb.ReplicationTarget(
        region_id=target.region_id,
        display_name=target.display_name,
        projects=[
            common_pb2.Project(
                project_id=p.project_id, name=p.name, account_id=p.account_id, main=p.main
            )
            for p in target.projects
        ],
    )


def replicate_request_from_proto(request: pb.ReplicateBackupRequest) -> models.ReplicateRequest:
    return models.ReplicateRequest(
        source_region_id=request.source_region_id,
        backup_id=request.backup_id,
        target_region_id=request.target_region_id,
        source_project_id=request.source_project_id,
        target_project_id=request.target_project_id,
        name=request.name,
        description=request.description,
        idempotency_token=request.idempotency_token,
    )


def job_filter_from_proto(request: pb.ListReplicationJobsRequest) -> models.JobFilter:
    try:
        status = models.JobStatus(request.status)
    except ValueError:
        status = models.JobStatus.UNSPECIFIED
    return models.JobFilter(
        status=status,
        source_backup_id=request.source_backup_id,
        target_region_id=request.target_region_id,
        source_region_id=request.source_region_id,
        created_after=_instant(request, "created_after"),
        created_before=_instant(request, "created_before"),
        policy_id=request.policy_id,
    )


def job_to_proto(job: models.ReplicationJob) -> pb.ReplicationJob:
    p = job.progress
    return pb.ReplicationJob(
        job_id=job.job_id,
        way=int(job.way),  # type: ignore[arg-type]
        policy_id=job.policy_id,
        source_region_id=job.source_region_id,
        source_project_id=job.source_project_id,
        source_backup_id=job.source_backup_id,
        target_region_id=job.target_region_id,
        target_project_id=job.target_project_id,
        replica_id=job.replica_id,
        replica_name=job.replica_name,
        replica_description=job.replica_description,
        status=int(job.status),  # type: ignore[arg-type]
        progress=pb.ReplicationProgress(
            chunks_planned=p.chunks_planned,
            bytes_planned=p.bytes_planned,
            chunks_sent=p.chunks_sent,
            bytes_sent=p.bytes_sent,
            chunks_skipped=p.chunks_skipped,
            bytes_skipped=p.bytes_skipped,
        ),
        failure_reason=job.failure_reason,
        attempts=job.attempts,
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at),
        updated_at=timestamp(job.updated_at),
    )
