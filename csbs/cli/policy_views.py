"""How `csbs policy` shows policies and their runs: schedules in the policy's time zone,
retention, what each run did, and a run with the jobs it started."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.timestamp_pb2 import Timestamp

from csbs.cli.job import progress_text
from csbs.cli.output import Printer, when, word
from csbs.v1 import coordinator_pb2 as cpb


def _set(ts: Timestamp) -> bool:
    return bool(ts.seconds or ts.nanos)


def schedule_text(schedule: cpb.Schedule) -> str:
    return f"{schedule.rrule} ({schedule.timezone or 'UTC'})"


def when_in(ts: Timestamp, timezone: str) -> str:
    """A time in UTC, and in the schedule's time zone too when that is another."""
    text = when(ts)
    if not text or timezone in ("", "UTC"):
        return text
    try:
        local = datetime.fromtimestamp(ts.seconds, UTC).astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return text
    return f"{text} ({local:%Y-%m-%d %H:%M} {timezone})"


def retention_text(rule: cpb.RetentionRule) -> str:
    which = rule.WhichOneof("rule")
    if which == "keep_count":
        return f"keep the newest {rule.keep_count} backups of each server"
    if which == "keep_days":
        return f"keep each backup {rule.keep_days} days"
    return "keep forever"


def _next_text(policy: cpb.Policy, ts: Timestamp, timezone: str, enabled: bool) -> str:
    if _set(ts):
        return when_in(ts, timezone)
    if not policy.enabled:
        return "none: the policy is disabled"
    if not enabled:
        return "none: replication is disabled"
    return ""


def print_policy(out: Printer, policy: cpb.Policy) -> None:
    backup_tz = policy.backup_schedule.timezone
    pairs = [
        ("ID", policy.policy_id),
        ("Name", policy.name),
        ("Description", policy.description),
        ("Region", policy.region_id),
        ("Project", policy.project_id),
        ("Enabled", "yes" if policy.enabled else "no"),
        ("Servers", ", ".join(policy.server_ids) or "none"),
        ("Backups", schedule_text(policy.backup_schedule)),
        ("Retention", retention_text(policy.retention)),
        ("Next backup", _next_text(policy, policy.next_backup_at, backup_tz, True)),
    ]
    if policy.HasField("replication"):
        r = policy.replication
        pairs += [
            (
                "Replicate to",
                f"{r.target_region_id} / {r.target_project_id}"
                + ("" if r.enabled else " (replication disabled)"),
            ),
            ("Replication", schedule_text(r.schedule)),
            (
                "Replicas kept",
                f"the newest {r.replica_keep_count}" if r.replica_keep_count else "all",
            ),
            (
                "Next replication",
                _next_text(policy, policy.next_replication_at, r.schedule.timezone, r.enabled),
            ),
        ]
    else:
        pairs.append(("Replication", "none"))
    pairs += [("Created", when(policy.created_at)), ("Updated", when(policy.updated_at))]
    out.fields(pairs)


def replication_text(policy: cpb.Policy) -> str:
    if not policy.HasField("replication"):
        return ""
    r = policy.replication
    return f"{r.target_region_id} / {r.target_project_id}" + ("" if r.enabled else " (off)")


def _action(item: cpb.PolicyRunItem) -> str:
    return item.action.replace("_", " ")


def _summary(run: cpb.PolicyRun) -> str:
    """What a run did, counted: `1 backed up, 2 deleted`."""
    counts: dict[str, int] = {}
    for item in run.items:
        counts[_action(item)] = counts.get(_action(item), 0) + 1
    return ", ".join(f"{n} {action}" for action, n in counts.items())


def _run_cells(run: cpb.PolicyRun) -> tuple[str, str, str, str, str]:
    return (
        run.run_id,
        when(run.scheduled_at),
        word(cpb.PolicyRunKind, run.kind),
        word(cpb.PolicyRunTrigger, run.trigger),
        word(cpb.PolicyRunStatus, run.status),
    )


def print_runs_summary(out: Printer, runs: Sequence[cpb.PolicyRun], empty: str) -> None:
    """One line a run: when, kind, trigger, status, what it did, and why."""
    out.table(
        ("RUN", "WHEN", "KIND", "TRIGGER", "STATUS", "DID", "REASON"),
        ((*_run_cells(r), _summary(r), r.reason) for r in runs),
        empty=empty,
    )


def _item_cells(item: cpb.PolicyRunItem) -> tuple[str, str, str, str, str]:
    return (_action(item), item.server_id, item.backup_id, item.job_id, item.reason)


def print_runs(out: Printer, runs: Sequence[cpb.PolicyRun], empty: str) -> None:
    """The run records, item by item: a run's own columns on its first line, each thing it did,
    skipped or failed on a line of its own (a run's reason, if it has one, on its first)."""
    rows: list[tuple[str, ...]] = []
    blank = ("",) * 5
    for run in runs:
        items = list(run.items)
        if run.reason or not items:
            rows.append((*_run_cells(run), "", "", "", "", run.reason))
        else:
            rows.append((*_run_cells(run), *_item_cells(items.pop(0))))
        rows += [(*blank, *_item_cells(item)) for item in items]
    out.table(
        (
            "RUN",
            "WHEN",
            "KIND",
            "TRIGGER",
            "STATUS",
            "ACTION",
            "SERVER",
            "BACKUP",
            "JOB",
            "REASON",
        ),
        rows,
        empty=empty,
    )


def print_run(out: Printer, run: cpb.PolicyRun, jobs: Sequence[cpb.ReplicationJob]) -> None:
    out.fields(
        [
            ("Run", run.run_id),
            ("Policy", run.policy_id),
            ("Kind", word(cpb.PolicyRunKind, run.kind)),
            ("Trigger", word(cpb.PolicyRunTrigger, run.trigger)),
            ("Status", word(cpb.PolicyRunStatus, run.status)),
            ("Reason", run.reason),
            ("Scheduled", when(run.scheduled_at)),
            ("Started", when(run.started_at)),
            ("Finished", when(run.finished_at)),
        ]
    )
    out.line()
    running = run.status == cpb.POLICY_RUN_STATUS_RUNNING
    out.table(
        ("ACTION", "SERVER", "BACKUP", "JOB", "REASON"),
        (_item_cells(item) for item in run.items),
        empty="nothing done yet" if running else "nothing to do",
    )
    if run.kind != cpb.POLICY_RUN_KIND_REPLICATION:
        return
    out.line()
    out.table(
        ("JOB", "BACKUP", "TO", "STATUS", "PROGRESS"),
        (
            (
                j.job_id,
                j.source_backup_id,
                f"{j.target_region_id} / {j.target_project_id}",
                word(cpb.ReplicationJobStatus, j.status)
                + (f": {j.failure_reason}" if j.failure_reason else ""),
                progress_text(j),
            )
            for j in jobs
        ),
        empty="no replication jobs started",
    )
