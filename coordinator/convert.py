"""Domain objects to and from csbs.v1 protobuf messages: the only place that knows both."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator import models, policy_models
from coordinator.links import Link
from coordinator.recovery_points import PointFilter, RecoveryPoint
from coordinator.schedule import Schedule
from csbs.errors import InvalidArgument
from csbs.node_views import ProjectSummary
from csbs.timestamps import instant, timestamp
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as pb


def _instant(message: pb.ListReplicationJobsRequest, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    ts: Timestamp = getattr(message, field)
    return instant(ts, field)


def _projects_to_proto(projects: Iterable[ProjectSummary]) -> list[common_pb2.Project]:
    return [
        common_pb2.Project(
            project_id=p.project_id, name=p.name, account_id=p.account_id, main=p.main
        )
        for p in projects
    ]


def target_to_proto(target: models.ReplicationTarget) -> pb.ReplicationTarget:
    return pb.ReplicationTarget(
        region_id=target.region_id,
        display_name=target.display_name,
        projects=_projects_to_proto(target.projects),
        unreachable=target.unreachable,
        unreachable_reason=target.unreachable_reason,
    )


def region_to_proto(region: models.RegionListing) -> pb.Region:
    return pb.Region(
        region_id=region.region_id,
        display_name=region.display_name,
        accepts_replication=region.accepts_replication,
        projects=_projects_to_proto(region.projects),
        node_address=region.node_address,
        tls=region.tls,
        unreachable=region.unreachable,
        unreachable_reason=region.unreachable_reason,
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
        cleanup_pending=job.cleanup_pending,
        replica_deleted=job.replica_deleted,
    )


# -- policies ------------------------------------------------------------------------------------
def _schedule_to_proto(schedule: Schedule) -> pb.Schedule:
    return pb.Schedule(rrule=schedule.rrule, timezone=schedule.timezone)


def _schedule_from_proto(schedule: pb.Schedule) -> Schedule:
    return Schedule(rrule=schedule.rrule, timezone=schedule.timezone or "UTC")


def policy_to_proto(policy: policy_models.Policy) -> pb.Policy:
    retention = pb.RetentionRule()
    if policy.retention.keep_count:
        retention.keep_count = policy.retention.keep_count
    elif policy.retention.keep_days:
        retention.keep_days = policy.retention.keep_days
    repl = policy.replication
    return pb.Policy(
        policy_id=policy.policy_id,
        region_id=policy.region_id,
        project_id=policy.project_id,
        name=policy.name,
        description=policy.description,
        server_ids=list(policy.server_ids),
        backup_schedule=_schedule_to_proto(policy.backup_schedule),
        retention=retention,
        enabled=policy.enabled,
        replication=None
        if repl is None
        else pb.PolicyReplication(
            enabled=repl.enabled,
            target_region_id=repl.target_region_id,
            target_project_id=repl.target_project_id,
            schedule=_schedule_to_proto(repl.schedule),
            replica_keep_count=repl.replica_keep_count,
        ),
        created_at=timestamp(policy.created_at),
        updated_at=timestamp(policy.updated_at),
        next_backup_at=timestamp(policy.next_backup_at),
        next_replication_at=timestamp(policy.next_replication_at),
    )


def policy_from_proto(message: pb.Policy) -> policy_models.Policy:
    now = datetime.now(UTC)  # placeholders: the service sets the real times
    which = message.retention.WhichOneof("rule")
    retention = policy_models.Retention(
        keep_count=message.retention.keep_count if which == "keep_count" else 0,
        keep_days=message.retention.keep_days if which == "keep_days" else 0,
    )
    if which and not (message.retention.keep_count or message.retention.keep_days):
        raise InvalidArgument(f"retention.{which}: 1 to {policy_models.MAX_KEEP}")
    repl = message.replication if message.HasField("replication") else None
    return policy_models.Policy(
        policy_id=message.policy_id,
        region_id=message.region_id,
        project_id=message.project_id,
        name=message.name,
        description=message.description,
        server_ids=tuple(message.server_ids),
        backup_schedule=_schedule_from_proto(message.backup_schedule),
        retention=retention,
        enabled=message.enabled,
        replication=None
        if repl is None
        else policy_models.PolicyReplication(
            enabled=repl.enabled,
            target_region_id=repl.target_region_id,
            target_project_id=repl.target_project_id,
            schedule=_schedule_from_proto(repl.schedule),
            replica_keep_count=repl.replica_keep_count,
        ),
        created_at=now,
        updated_at=now,
    )


def run_to_proto(run: policy_models.PolicyRun) -> pb.PolicyRun:
    return pb.PolicyRun(
        run_id=run.run_id,
        policy_id=run.policy_id,
        kind=run.kind,  # type: ignore[arg-type]
        trigger=run.trigger,  # type: ignore[arg-type]
        status=run.status,  # type: ignore[arg-type]
        scheduled_at=timestamp(run.scheduled_at),
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        items=[
            pb.PolicyRunItem(
                backup_id=i.backup_id,
                server_id=i.server_id,
                job_id=i.job_id,
                action=i.action,
                reason=i.reason,
            )
            for i in run.items
        ],
        job_ids=list(run.job_ids),
        reason=run.reason,
    )


def run_size_in_list(run: policy_models.PolicyRun) -> int:
    """The bytes a run adds to a ListPolicyRunsResponse: its encoding with its field's tag and
    length."""
    return pb.ListPolicyRunsResponse(runs=[run_to_proto(run)]).ByteSize()


def link_to_proto(link: Link) -> pb.Link:
    return pb.Link(
        source_region_id=link.source_region_id,
        target_region_id=link.target_region_id,
        bandwidth_bytes_per_second=link.bandwidth_bytes_per_second,
        latency_ms=link.latency_ms,
        cut=link.cut,
    )


def link_from_proto(message: pb.Link) -> Link:
    return Link(
        source_region_id=message.source_region_id,
        target_region_id=message.target_region_id,
        bandwidth_bytes_per_second=message.bandwidth_bytes_per_second,
        latency_ms=message.latency_ms,
        cut=message.cut,
    )


def point_filter_from_proto(request: pb.GetRecoveryPointsRequest) -> PointFilter:
    return PointFilter(
        source_region_id=request.source_region_id,
        target_region_id=request.target_region_id,
        server_id=request.server_id,
        range_from=_instant(request, "from"),  # type: ignore[arg-type]
        range_to=_instant(request, "to"),  # type: ignore[arg-type]
    )


def point_to_proto(point: RecoveryPoint) -> pb.RecoveryPoint:
    message = pb.RecoveryPoint(
        source_region_id=point.source_region_id,
        source_project_id=point.source_project_id,
        server_id=point.server_id,
        target_region_id=point.target_region_id,
        has_replica=point.replica is not None,
        range_from=timestamp(point.range_from),
        range_to=timestamp(point.range_to),
        worst_seconds=int(point.worst.total_seconds()),
        median_seconds=int(point.median.total_seconds()),
        replications=point.replications,
        failed_replications=point.failed_replications,
    )
    if point.replica is not None and point.backup_time is not None and point.age is not None:
        message.replica_id = point.replica.replica_id
        message.source_backup_id = point.replica.source_backup_id
        message.backup_time.FromDatetime(point.backup_time)
        if point.replica.finished_at is not None:
            message.replicated_at.FromDatetime(point.replica.finished_at)
        message.age_seconds = int(point.age.total_seconds())
    return message
