"""The rules a replication is checked against before it is accepted, as pure functions over
what the nodes said (no I/O): R1 and R2 on the source backup, P3 (whose project), the default
replica name (M1, M2), and what an idempotency token names. ReplicateBackup (M1) and the
policies' runs (M2, M3) check through these, each rule worded once."""

from __future__ import annotations

from collections.abc import Callable

from coordinator.errors import IdempotencyTokenReused
from coordinator.models import ReplicationJob
from csbs.errors import (
    BackupNotAvailable,
    BackupNotOfCloudServer,
    BackupWithoutSystemDisk,
    CsbsError,
    NotFound,
    ProjectOfAnotherAccount,
    ReplicaCannotBeReplicated,
)
from csbs.node_views import (
    BackupStatus,
    BackupSummary,
    ProjectSummary,
    RegionSummary,
    ReplicationWay,
    ServerType,
)


def default_replica_name(way: ReplicationWay, backup_id: str) -> str:
    """M1: manual_rep_from_<backup ID>; a policy's replica policy_rep_from_<backup ID>."""
    prefix = "manual" if way == ReplicationWay.MANUAL else "policy"
    return f"{prefix}_rep_from_{backup_id}"


def job_parameters(job: ReplicationJob) -> dict[str, str]:
    """What a job was asked for, by the request's field names (an idempotency token answers
    with the job only for the same)."""
    return {
        "source_region_id": job.source_region_id,
        "backup_id": job.source_backup_id,
        "target_region_id": job.target_region_id,
        "target_project_id": job.target_project_id,
        "name": job.replica_name,
        "description": job.replica_description,
        "way": job.way.name,
        "policy_id": job.policy_id,
    }


def _project_not_found(project_id: str, region_id: str) -> CsbsError:
    return NotFound("project", f"{project_id} in region {region_id}")


def own_project(
    info: RegionSummary,
    region_id: str,
    account_id: str,
    project_id: str,
    field_name: str,
    not_found: Callable[[str, str], CsbsError] = _project_not_found,
) -> ProjectSummary:
    """The named project, which must be one of the account's own, or the account's main
    project in the region when none is named (P3). Another account's project is
    PERMISSION_DENIED, an unknown one `not_found` (issue 6). `info` must show every project of
    the region (asked for no account), to tell the two apart."""
    if not project_id:
        main = info.main_project(account_id)
        if main is None:
            raise not_found("(main)", region_id)
        return main
    project = info.project(project_id)
    if project is None:
        raise not_found(project_id, region_id)
    if project.account_id != account_id:
        raise ProjectOfAnotherAccount(field_name, project_id, region_id)
    return project


def same_request(existing: ReplicationJob, asked: dict[str, str], token: str) -> ReplicationJob:
    """The job the token already names, if it was asked with the same parameters;
    INVALID_ARGUMENT naming the token and the first parameter that differs otherwise."""
    first = job_parameters(existing)
    for name, value in asked.items():
        if first[name] != value:
            raise IdempotencyTokenReused(
                "idempotency_token",
                token,
                existing.job_id,
                "replication job",
                name,
                first[name],
                value,
            )
    return existing


def check_replicable(backup: BackupSummary) -> None:
    """R2 and R1, in that order (a replica is refused for what it is before its state)."""
    b = backup.backup_id
    if backup.origin.replicated:
        raise ReplicaCannotBeReplicated(b, backup.origin.source_region_id)
    if backup.server_type != ServerType.ECS:
        raise BackupNotOfCloudServer(b, backup.server_type.name)
    if not any(d.system for d in backup.disks):
        raise BackupWithoutSystemDisk(b)
    if backup.status != BackupStatus.AVAILABLE:
        raise BackupNotAvailable(b, backup.status.name.lower())
