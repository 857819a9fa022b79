"""What a policy's run selects, keeps and deletes, as pure functions over what the nodes and
the catalog said (no I/O), so that each rule is unit-tested without processes:

- the skip rule: a run still going when the next of its policy and kind falls due makes that
  one SKIPPED, not queued;
- what a replication run does with each backup the policy made: re-attach to the job this run
  started (after a crash), skip it (R4b: a policy replicates a backup to a region once; R3: not
  while a job copies it there), or replicate it;
- what retention deletes: the policy's own available backups beyond its rule, and its
  available replicas in the target region beyond replica_keep_count, each counted per server
  (coordinator/retention.py); never one that has an image (kept until the image is deleted)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from coordinator.models import JobStatus
from coordinator.policy_models import KIND_NAMES, SKIPPED, Policy, PolicyRun, RunItem
from coordinator.retention import expired
from csbs.errors import ReplicaAlreadyExists
from csbs.node_views import BackupStatus, BackupSummary


class JobOutcome(Protocol):
    """What the rules read of a replication job."""

    @property
    def job_id(self) -> str: ...

    @property
    def status(self) -> JobStatus: ...


# -- the skip rule --------------------------------------------------------------------------------
def skip_if_going(run: PolicyRun, going_run_id: str | None, now: datetime) -> PolicyRun:
    """The new run as recorded: SKIPPED, naming the run still going, if one of its policy and
    kind is (`going_run_id`); unchanged (RUNNING) otherwise."""
    if going_run_id is None:
        return run
    return replace(
        run,
        status=SKIPPED,
        finished_at=now,
        reason=f"the previous {KIND_NAMES[run.kind]} run {going_run_id} was still going",
    )


# -- replication runs -----------------------------------------------------------------------------
def why_not_replicate(backup_id: str, target: str, jobs: Iterable[JobOutcome]) -> str:
    """Why a policy's run must not replicate this backup to this region, or "" if it may: never
    again once any way replicated it there successfully (R4b, a manual copy counts, even after
    its replica was deleted), nor while a job copies it there (R3). `jobs` are every job of
    the backup to that region."""
    jobs = list(jobs)
    for job in jobs:
        if job.status == JobStatus.SUCCESS:
            return (
                f"R4b: backup {backup_id} was already replicated to region {target} "
                f"(job {job.job_id}); a policy replicates a backup to a region once"
            )
    for job in jobs:
        if job.status in (JobStatus.WAITING, JobStatus.REPLICATING):
            return ReplicaAlreadyExists(backup_id, target, job.job_id).message
    return ""


@dataclass(frozen=True)
class ReplicationChoice:
    """What a replication run does with one backup: re-attach to `attach_job_id`, skip it for
    `skip_reason`, or (neither) replicate it."""

    attach_job_id: str = ""
    skip_reason: str = ""

    @property
    def replicate(self) -> bool:
        return not self.attach_job_id and not self.skip_reason


def choose_replication(
    backup_id: str, target: str, started_job_id: str | None, jobs: Iterable[JobOutcome]
) -> ReplicationChoice:
    """The job this run already started for the backup (`started_job_id`, found by the run's
    token) is its own, whatever its state: the run re-attaches to it. Otherwise R4b and R3
    decide (why_not_replicate) over `jobs`, every job of the backup to the target region."""
    if started_job_id is not None:
        return ReplicationChoice(attach_job_id=started_job_id)
    return ReplicationChoice(skip_reason=why_not_replicate(backup_id, target, jobs))


# -- retention ------------------------------------------------------------------------------------
def backups_retention_deletes(
    policy: Policy, backups: Iterable[BackupSummary], now: datetime
) -> list[BackupSummary]:
    """The backups the policy's retention no longer keeps, among those it made (`backups`):
    only available ones, never a replica, counted per server; none if the rule keeps all."""
    rule = policy.retention
    if not rule.keep_count and not rule.keep_days:
        return []
    own = [b for b in backups if b.status == BackupStatus.AVAILABLE and not b.origin.replicated]
    return expired(
        own, lambda b: b.server_id, now, keep_count=rule.keep_count, keep_days=rule.keep_days
    )


def policy_replicas(policy: Policy, backups: Iterable[BackupSummary]) -> list[BackupSummary]:
    """The available replicas this policy made, among the target project's backups."""
    return [
        b
        for b in backups
        if b.origin.replicated
        and b.origin.policy_id == policy.policy_id
        and b.status == BackupStatus.AVAILABLE
    ]


def replicas_retention_deletes(
    policy: Policy,
    replicas: Sequence[BackupSummary],
    server_of: Callable[[BackupSummary], str],
    now: datetime,
) -> list[BackupSummary]:
    """The replicas (policy_replicas) beyond the newest replica_keep_count of each protected
    server (`server_of`, see retention.server_of_replica); none if the policy keeps them all."""
    repl = policy.replication
    if repl is None or not repl.replica_keep_count:
        return []
    return expired(replicas, server_of, now, keep_count=repl.replica_keep_count)


def kept_for_image(backup: BackupSummary, why: str) -> RunItem | None:
    """A backup retention would delete but keeps, because an image was made of it."""
    if not backup.image_ids:
        return None
    return RunItem(
        "kept",
        backup.backup_id,
        backup.server_id,
        reason=f"{why}: backup has image {backup.image_ids[0]}; kept until it is deleted",
    )
