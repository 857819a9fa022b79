"""What a policy's run selects, keeps and deletes (coordinator/policy_rules.py), without
processes: the skip rule, R4b and R3 on a replication run, which backup a replication run
re-attaches to, skips or replicates, and which backups and replicas retention deletes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from coordinator.models import JobStatus
from coordinator.policy_models import (
    KIND_BACKUP,
    KIND_REPLICATION,
    RUNNING,
    SKIPPED,
    TRIGGER_SCHEDULE,
    Policy,
    PolicyReplication,
    PolicyRun,
    Retention,
)
from coordinator.policy_rules import (
    backups_retention_deletes,
    choose_replication,
    kept_for_image,
    policy_replicas,
    replicas_retention_deletes,
    skip_if_going,
    why_not_replicate,
)
from coordinator.schedule import Schedule
from csbs.node_views import BackupOrigin, BackupStatus, BackupSummary, ServerType

NOW = datetime(2024, 3, 1, 12, tzinfo=UTC)
DAILY = Schedule("FREQ=DAILY;BYHOUR=2;BYMINUTE=0", "UTC")

pytestmark = pytest.mark.timeout(30)


@dataclass(frozen=True)
class Job:
    job_id: str
    status: JobStatus


def _policy(keep_count: int = 0, keep_days: int = 0, replica_keep_count: int = 0) -> Policy:
    return Policy(
        policy_id="pol",
        region_id="north",
        project_id="proj",
        name="daily",
        description="",
        server_ids=("srv1", "srv2"),
        backup_schedule=DAILY,
        retention=Retention(keep_count=keep_count, keep_days=keep_days),
        enabled=True,
        replication=PolicyReplication(True, "south", "proj-south", DAILY, replica_keep_count),
        created_at=NOW,
        updated_at=NOW,
        account_id="acct",
    )


def _backup(
    backup_id: str,
    server_id: str,
    age_days: int,
    status: BackupStatus = BackupStatus.AVAILABLE,
    origin: BackupOrigin | None = None,
    image_ids: tuple[str, ...] = (),
) -> BackupSummary:
    return BackupSummary(
        backup_id=backup_id,
        project_id="proj",
        name=backup_id,
        server_type=ServerType.ECS,
        status=status,
        disks=(),
        origin=origin or BackupOrigin(),
        policy_id="pol",
        server_id=server_id,
        image_ids=image_ids,
        created_at=NOW - timedelta(days=age_days),
    )


def _replica(replica_id: str, age_days: int, policy_id: str = "pol") -> BackupSummary:
    origin = BackupOrigin(
        replicated=True, source_backup_id=f"src-{replica_id}", policy_id=policy_id
    )
    return _backup(replica_id, "", age_days, origin=origin)


def _ids(backups: list[BackupSummary]) -> set[str]:
    return {b.backup_id for b in backups}


# -- the skip rule --------------------------------------------------------------------------------
def _run(kind: int) -> PolicyRun:
    return PolicyRun("new", "pol", kind, TRIGGER_SCHEDULE, RUNNING, NOW, started_at=NOW)


def test_skip_rule_a_run_still_going_makes_the_next_of_its_kind_skipped() -> None:
    later = NOW + timedelta(seconds=1)
    skipped = skip_if_going(_run(KIND_REPLICATION), "old-run", later)
    assert skipped.status == SKIPPED
    assert skipped.finished_at == later
    assert skipped.reason == "the previous replication run old-run was still going"
    assert skip_if_going(_run(KIND_BACKUP), "b", NOW).reason.startswith("the previous backup run")


def test_skip_rule_with_nothing_going_the_run_runs() -> None:
    run = _run(KIND_BACKUP)
    assert skip_if_going(run, None, NOW) == run


# -- R4b, R3 and the replication selection --------------------------------------------------------
def test_r4b_policy_never_replicates_a_backup_to_a_region_twice() -> None:
    reason = why_not_replicate("b1", "south", [Job("j1", JobStatus.SUCCESS)])
    assert reason.startswith("R4b: backup b1 was already replicated to region south (job j1)")


def test_r4b_counts_any_success_even_after_failures_and_before_r3() -> None:
    jobs = [
        Job("j1", JobStatus.FAILED),
        Job("j2", JobStatus.REPLICATING),
        Job("j3", JobStatus.SUCCESS),
    ]
    assert why_not_replicate("b1", "south", jobs).startswith("R4b:")


def test_r3_no_policy_replication_while_a_job_copies_the_backup_there() -> None:
    for status in (JobStatus.WAITING, JobStatus.REPLICATING):
        reason = why_not_replicate("b1", "south", [Job("j1", JobStatus.FAILED), Job("j2", status)])
        assert reason == (
            "R3: backup b1 is already being replicated to region south (job j2); a region "
            "holds at most one replica of a backup"
        )


def test_a_backup_whose_jobs_all_failed_or_that_has_none_is_replicated() -> None:
    assert why_not_replicate("b1", "south", [Job("j1", JobStatus.FAILED)]) == ""
    assert choose_replication("b1", "south", None, []).replicate
    assert choose_replication("b1", "south", None, [Job("j1", JobStatus.FAILED)]).replicate


def test_replication_selection_a_run_re_attaches_to_the_job_it_started() -> None:
    # After a crash the run finds its own job by its token, whatever that job's state: its own
    # success is not R4b, its own copying is not R3.
    for status in JobStatus:
        choice = choose_replication("b1", "south", "mine", [Job("mine", status)])
        assert (choice.attach_job_id, choice.skip_reason, choice.replicate) == ("mine", "", False)


def test_replication_selection_skips_what_r4b_or_r3_refuses() -> None:
    choice = choose_replication("b1", "south", None, [Job("manual", JobStatus.SUCCESS)])
    assert not choice.replicate and not choice.attach_job_id
    assert choice.skip_reason.startswith("R4b:")


# -- retention ------------------------------------------------------------------------------------
def test_backup_retention_deletes_only_the_policys_available_backups_per_server() -> None:
    backups = [
        _backup("a0", "srv1", 0),
        _backup("a1", "srv1", 1),
        _backup("a2", "srv1", 2),
        _backup("a3", "srv1", 3, status=BackupStatus.CREATING),
        _backup("a4", "srv1", 4, status=BackupStatus.ERROR),
        _backup("b0", "srv2", 0),
        _backup("b5", "srv2", 5),
        _replica("r9", 9),  # a replica made into this project is never this rule's
    ]
    assert _ids(backups_retention_deletes(_policy(keep_count=2), backups, NOW)) == {"a2"}
    assert _ids(backups_retention_deletes(_policy(keep_days=1), backups, NOW)) == {"a2", "b5"}
    assert backups_retention_deletes(_policy(), backups, NOW) == []


def test_replica_retention_keeps_n_replicas_of_each_server_of_this_policy_only() -> None:
    listed = [
        _replica("x0", 0),
        _replica("x1", 1),
        _replica("x2", 2),
        _replica("y0", 0),
        _replica("y3", 3),
        _replica("other", 5, policy_id="another-policy"),
        _backup("plain", "srv1", 6),
        replace(_replica("creating", 7), status=BackupStatus.CREATING),
    ]
    replicas = policy_replicas(_policy(), listed)
    assert _ids(replicas) == {"x0", "x1", "x2", "y0", "y3"}
    server = {"x0": "srv1", "x1": "srv1", "x2": "srv1", "y0": "srv2", "y3": "srv2"}
    victims = replicas_retention_deletes(
        _policy(replica_keep_count=1), replicas, lambda r: server[r.backup_id], NOW
    )
    assert _ids(victims) == {"x1", "x2", "y3"}
    assert replicas_retention_deletes(_policy(), replicas, lambda r: "", NOW) == []


def test_retention_keeps_a_backup_that_has_an_image() -> None:
    kept = kept_for_image(_backup("a1", "srv1", 1, image_ids=("img1", "img2")), "retention")
    assert kept is not None
    assert (kept.action, kept.backup_id, kept.server_id) == ("kept", "a1", "srv1")
    assert kept.reason == "retention: backup has image img1; kept until it is deleted"
    assert kept_for_image(_backup("a2", "srv1", 1), "retention") is None
