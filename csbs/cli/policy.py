"""`csbs policy`: backup policies of a region (with replication: M2): create, list, show,
update, delete, the servers they protect, running one now (M3) and the records of their runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import typer

from csbs.cli.backup import follow_backup
from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import Refused, UsageError
from csbs.cli.job import follow_job
from csbs.cli.output import when, word
from csbs.cli.policy_views import (
    print_policy,
    print_run,
    print_runs,
    print_runs_summary,
    replication_text,
    schedule_text,
)
from csbs.cli.progress import Step, follow
from csbs.v1 import coordinator_pb2 as cpb

app = typer.Typer(help="Backup policies (and their replication): schedules, retention, runs.")

RUN_POLL = 0.2  # seconds between two looks at a run being waited for
SHOWN_RUNS = 10  # runs `policy show` lists (the newest)

PolicyArgument = Annotated[str, typer.Argument(metavar="POLICY", help="The policy's ID")]


# --- the options a policy is made of -----------------------------------------------------------

ScheduleHelp = "An iCalendar RRULE: FREQ=DAILY, or FREQ=WEEKLY;BYDAY=..., with BYHOUR and BYMINUTE"


@dataclass(frozen=True)
class _Replication:
    """The replication options as given (None: not given)."""

    to: str | None = None
    to_project: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    keep_count: int | None = None
    enabled: bool | None = None

    def given(self) -> bool:
        return any(
            value is not None
            for value in (
                self.to,
                self.to_project,
                self.schedule,
                self.timezone,
                self.keep_count,
                self.enabled,
            )
        )


def _retention(
    keep_count: int | None, keep_days: int | None, keep_forever: bool = False
) -> cpb.RetentionRule | None:
    """The retention rule the options give; None if they give none."""
    given = [
        name
        for name, value in (
            ("--keep-count", keep_count is not None),
            ("--keep-days", keep_days is not None),
            ("--keep-forever", keep_forever),
        )
        if value
    ]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} cannot go together: a policy keeps by one rule")
    if keep_count is not None:
        return cpb.RetentionRule(keep_count=keep_count)
    if keep_days is not None:
        return cpb.RetentionRule(keep_days=keep_days)
    if keep_forever:
        return cpb.RetentionRule()
    return None


# --- commands ----------------------------------------------------------------------------------


@command(app, "create")
def create(
    session: Session,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The policy's name (P1)")],
    schedule: Annotated[str, typer.Option(help=f"When to back up: {ScheduleHelp}")],
    server: Annotated[
        list[str] | None, typer.Option("--server", help="A server to protect (ECS; repeat)")
    ] = None,
    timezone: Annotated[
        str, typer.Option(help="The schedule's IANA time zone (default: UTC)")
    ] = "",
    keep_count: Annotated[
        int | None, typer.Option(help="Keep the newest N backups of each server")
    ] = None,
    keep_days: Annotated[int | None, typer.Option(help="Keep each backup D days")] = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create it disabled: it runs on no schedule")
    ] = False,
    replicate_to: Annotated[
        str, typer.Option(help="Replicate its backups to this region (M2; R5: it must accept)")
    ] = "",
    replicate_to_project: Annotated[
        str, typer.Option(help="Your project there (P3) (default: your main project there)")
    ] = "",
    replication_schedule: Annotated[
        str, typer.Option(help=f"When to replicate: {ScheduleHelp}")
    ] = "",
    replication_timezone: Annotated[
        str | None,
        typer.Option(help="The replication schedule's time zone (default: --timezone)"),
    ] = None,
    replica_keep_count: Annotated[
        int, typer.Option(help="Keep the newest N replicas there (default: all)")
    ] = 0,
    description: Annotated[str, typer.Option(help="At most 255 characters (P2)")] = "",
    request_id: Annotated[
        str, typer.Option(help="Idempotency key: a retry with the same key returns the first")
    ] = "",
) -> None:
    """Create a backup policy in the region: servers backed up on a schedule, kept by a
    retention rule, and (with --replicate-to) replicated to another region on a schedule."""
    retention = _retention(keep_count, keep_days)
    policy = cpb.Policy(
        region_id=session.region_id,
        project_id=session.project_id,
        name=name,
        description=description,
        server_ids=server or [],
        backup_schedule=cpb.Schedule(rrule=schedule, timezone=timezone),
        retention=retention,
        enabled=not disabled,
    )
    if replicate_to:
        policy.replication.CopyFrom(
            cpb.PolicyReplication(
                enabled=True,
                target_region_id=replicate_to,
                target_project_id=replicate_to_project,
                schedule=cpb.Schedule(
                    rrule=replication_schedule,
                    timezone=timezone if replication_timezone is None else replication_timezone,
                ),
                replica_keep_count=replica_keep_count,
            )
        )
    else:
        stray = [
            option
            for option, given in (
                ("--replicate-to-project", bool(replicate_to_project)),
                ("--replication-schedule", bool(replication_schedule)),
                ("--replication-timezone", replication_timezone is not None),
                ("--replica-keep-count", bool(replica_keep_count)),
            )
            if given
        ]
        if stray:
            raise UsageError(f"{stray[0]} needs --replicate-to REGION")
    created = session.coordinator().create_policy(
        cpb.CreatePolicyRequest(policy=policy, request_id=request_id or uuid.uuid4().hex)
    )
    session.out.show(created, lambda: print_policy(session.out, created))


@command(app, "list")
def list_policies(session: Session) -> None:
    """The policies of the region (of the project given with --project; else of every project
    of yours there)."""
    policies = session.coordinator().list_policies(session.region_id, session.project_id)

    def human() -> None:
        where = f"project {session.project_id} of " if session.project_id else ""
        session.out.table(
            ("ID", "NAME", "ENABLED", "SERVERS", "SCHEDULE", "REPLICATE TO", "NEXT BACKUP"),
            (
                (
                    p.policy_id,
                    p.name,
                    "yes" if p.enabled else "no",
                    str(len(p.server_ids)),
                    schedule_text(p.backup_schedule),
                    replication_text(p),
                    when(p.next_backup_at),
                )
                for p in policies
            ),
            empty=f"no policies in {where}region {session.region_id}",
        )

    session.out.show_list(policies, human)


@command(app, "show")
def show(session: Session, policy_id: PolicyArgument) -> None:
    """Show a policy: its schedules and retention, when it next backs up and replicates, and its
    last runs (with --json: the policy alone; its runs are `csbs policy runs POLICY --json`)."""
    coordinator = session.coordinator()
    policy = coordinator.get_policy(policy_id)

    def human() -> None:
        runs = coordinator.list_policy_runs(policy_id)
        print_policy(session.out, policy)
        session.out.line()
        if len(runs) > SHOWN_RUNS:
            session.out.line(f"Last {SHOWN_RUNS} of {len(runs)} runs:")
        elif runs:
            session.out.line("Runs:")
        print_runs_summary(session.out, runs[-SHOWN_RUNS:], empty="no runs yet")

    session.out.show(policy, human)


@command(app, "update")
def update(
    session: Session,
    policy_id: PolicyArgument,
    name: Annotated[str | None, typer.Option(help="A new name (P1)")] = None,
    description: Annotated[str | None, typer.Option(help="At most 255 characters (P2)")] = None,
    schedule: Annotated[str | None, typer.Option(help=f"When to back up: {ScheduleHelp}")] = None,
    timezone: Annotated[
        str | None, typer.Option(help="The backup schedule's IANA time zone")
    ] = None,
    keep_count: Annotated[
        int | None, typer.Option(help="Keep the newest N backups of each server")
    ] = None,
    keep_days: Annotated[int | None, typer.Option(help="Keep each backup D days")] = None,
    keep_forever: Annotated[
        bool, typer.Option("--keep-forever", help="Keep every backup: no retention rule")
    ] = False,
    enabled: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="Run on its schedules, or not", show_default=False),
    ] = None,
    replicate_to: Annotated[
        str | None, typer.Option(help="Replicate to this region (adds replication if none)")
    ] = None,
    replicate_to_project: Annotated[
        str | None, typer.Option(help="Your project there (P3); empty: your main project")
    ] = None,
    replication_schedule: Annotated[
        str | None, typer.Option(help=f"When to replicate: {ScheduleHelp}")
    ] = None,
    replication_timezone: Annotated[
        str | None, typer.Option(help="The replication schedule's IANA time zone")
    ] = None,
    replica_keep_count: Annotated[
        int | None, typer.Option(help="Keep the newest N replicas there (0: all)")
    ] = None,
    replication_enabled: Annotated[
        bool | None,
        typer.Option(
            "--enable-replication/--disable-replication",
            help="Replicate on its schedule, or not (the rule is kept)",
            show_default=False,
        ),
    ] = None,
    no_replication: Annotated[
        bool, typer.Option("--no-replication", help="Remove the replication rule")
    ] = False,
) -> None:
    """Change a policy: only what is given changes (the update names exactly those fields)."""
    replication = _Replication(
        replicate_to,
        replicate_to_project,
        replication_schedule,
        replication_timezone,
        replica_keep_count,
        replication_enabled,
    )
    if no_replication and replication.given():
        raise UsageError("--no-replication cannot go with the other replication options")
    retention = _retention(keep_count, keep_days, keep_forever)
    coordinator = session.coordinator()
    change = cpb.Policy(policy_id=policy_id)
    fields: list[str] = []
    if name is not None:
        change.name = name
        fields.append("name")
    if description is not None:
        change.description = description
        fields.append("description")
    current: cpb.Policy | None = None
    if schedule is not None or timezone is not None:
        current = coordinator.get_policy(policy_id)
        change.backup_schedule.CopyFrom(
            cpb.Schedule(
                rrule=current.backup_schedule.rrule if schedule is None else schedule,
                timezone=current.backup_schedule.timezone if timezone is None else timezone,
            )
        )
        fields.append("backup_schedule")
    if retention is not None:
        change.retention.CopyFrom(retention)
        fields.append("retention")
    if enabled is not None:
        change.enabled = enabled
        fields.append("enabled")
    if no_replication:
        fields.append("replication")  # absent in the change: removed
    elif replication.given():
        current = current or coordinator.get_policy(policy_id)
        change.replication.CopyFrom(_changed_replication(current, replication))
        fields.append("replication")
    if not fields:
        raise UsageError("nothing to change: give at least one option (see --help)")
    updated = coordinator.update_policy(change, fields)
    session.out.show(updated, lambda: print_policy(session.out, updated))


def _changed_replication(current: cpb.Policy, given: _Replication) -> cpb.PolicyReplication:
    """The policy's replication rule with what was given changed (the update replaces the rule
    as a whole)."""
    if current.HasField("replication"):
        rule = cpb.PolicyReplication()
        rule.CopyFrom(current.replication)
    else:
        if not given.to or given.schedule is None:
            raise UsageError(
                f"policy {current.policy_id} has no replication rule: add one with "
                "--replicate-to REGION and --replication-schedule RRULE"
            )
        rule = cpb.PolicyReplication(
            enabled=True,
            schedule=cpb.Schedule(timezone=current.backup_schedule.timezone),
        )
    if given.to is not None:
        if given.to != rule.target_region_id and given.to_project is None:
            rule.target_project_id = ""  # the main project of the new target region
        rule.target_region_id = given.to
    if given.to_project is not None:
        rule.target_project_id = given.to_project
    if given.schedule is not None:
        rule.schedule.rrule = given.schedule
    if given.timezone is not None:
        rule.schedule.timezone = given.timezone
    if given.keep_count is not None:
        rule.replica_keep_count = given.keep_count
    if given.enabled is not None:
        rule.enabled = given.enabled
    return rule


@command(app, "delete")
def delete(session: Session, policy_id: PolicyArgument) -> None:
    """Delete a policy. A run in flight finishes what it started; the backups it made are kept."""
    answer = session.coordinator().delete_policy(policy_id)
    session.out.show(
        answer,
        lambda: session.out.line(f"deleted policy {policy_id}; the backups it made are kept"),
    )


ServersArgument = Annotated[list[str], typer.Argument(metavar="SERVER...", help="The servers' IDs")]


@command(app, "add-servers")
def add_servers(session: Session, policy_id: PolicyArgument, servers: ServersArgument) -> None:
    """Protect more servers with a policy (ECS only: R1a; a server is in at most one policy)."""
    policy = session.coordinator().add_policy_servers(policy_id, servers)
    session.out.show(policy, lambda: print_policy(session.out, policy))


@command(app, "remove-servers")
def remove_servers(session: Session, policy_id: PolicyArgument, servers: ServersArgument) -> None:
    """Stop protecting servers with a policy (the backups it made of them are kept)."""
    policy = session.coordinator().remove_policy_servers(policy_id, servers)
    session.out.show(policy, lambda: print_policy(session.out, policy))


def _poll_run(session: Session, policy_id: str, run_id: str) -> Iterator[cpb.PolicyRun]:
    """The run as its policy's records say, every RUN_POLL seconds, until it is not running."""
    coordinator = session.coordinator()
    while True:
        found = [r for r in coordinator.list_policy_runs(policy_id) if r.run_id == run_id]
        if not found:
            raise Refused(f"policy run {run_id} is not among the runs of policy {policy_id}")
        yield found[0]
        if found[0].status != cpb.POLICY_RUN_STATUS_RUNNING:
            return
        time.sleep(RUN_POLL)


def _run_step(run: cpb.PolicyRun) -> Step:
    return Step(
        word(cpb.PolicyRunStatus, run.status), 0, 0, run.status != cpb.POLICY_RUN_STATUS_RUNNING
    )


def wait_run(session: Session, run: cpb.PolicyRun) -> cpb.PolicyRun:
    """Follows what a run started (each backup or replication job, with progress), then the run
    itself until it is no longer running (retention is applied last), and returns its record."""
    if run.kind == cpb.POLICY_RUN_KIND_BACKUP:
        policy = session.coordinator().get_policy(run.policy_id)
        for item in run.items:
            if item.action == "backed_up":
                follow_backup(session, item.backup_id, policy.region_id, policy.project_id)
    else:
        for job_id in run.job_ids:
            follow_job(session, job_id)
    return follow(
        _poll_run(session, run.policy_id, run.run_id),
        _run_step,
        what=f"policy run {run.run_id[:8]}",
        resume=session.command_line("policy", "runs", run.policy_id),
        console=session.out.err,
    )


def _failure(run: cpb.PolicyRun) -> str:
    """Why a run waited for did not do what it was asked, or "" if it did."""
    status = word(cpb.PolicyRunStatus, run.status)
    if run.status in (cpb.POLICY_RUN_STATUS_FAILED, cpb.POLICY_RUN_STATUS_SKIPPED):
        return f"policy run {run.run_id} {status}: {run.reason}"
    failed = [item for item in run.items if item.action == "failed"]
    if failed:
        what = failed[0].backup_id or failed[0].server_id
        return (
            f"policy run {run.run_id} finished with {len(failed)} failed; "
            f"{what}: {failed[0].reason}"
        )
    return ""


@command(app, "run")
def run_now(
    session: Session,
    policy_id: PolicyArgument,
    replication: Annotated[
        bool,
        typer.Option(
            "--replication",
            help="Run its replication (M3): every backup it made not yet in the target region",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow what it started with progress until the run has ended"),
    ] = False,
) -> None:
    """Run a policy now (execute-now): back up its servers, or with --replication replicate
    (M3); prints the run and the replication jobs it started (exit 1 with --wait if it failed)."""
    kind = cpb.POLICY_RUN_KIND_REPLICATION if replication else cpb.POLICY_RUN_KIND_BACKUP
    coordinator = session.coordinator()
    run = coordinator.execute_policy(policy_id, kind)
    if wait and run.status == cpb.POLICY_RUN_STATUS_RUNNING:
        run = wait_run(session, run)

    def human() -> None:
        jobs = [coordinator.get_job(job_id) for job_id in run.job_ids]
        print_run(session.out, run, jobs)

    session.out.show(run, human)
    if wait:
        failure = _failure(run)
        if failure:
            raise Refused(failure)
    elif run.status == cpb.POLICY_RUN_STATUS_RUNNING:
        runs = session.command_line("policy", "runs", policy_id)
        session.out.hint(f"The run goes on; follow it with `{runs}`")


@command(app, "runs")
def runs(session: Session, policy_id: PolicyArgument) -> None:
    """The records of a policy's runs, oldest first: when, kind, trigger, status, and each thing
    a run did, skipped or failed (its action, server, backup, job and reason)."""
    found = session.coordinator().list_policy_runs(policy_id)
    session.out.show_list(
        found, lambda: print_runs(session.out, found, empty=f"policy {policy_id} has not run yet")
    )
