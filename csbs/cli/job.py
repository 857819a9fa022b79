"""`csbs job`: replication jobs, as the coordinator keeps them: list, show, and watch one until it
ends."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import Refused
from csbs.cli.output import Printer, size, when, word
from csbs.cli.progress import Step, follow
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb

app = typer.Typer(help="Replication jobs: list, show, watch.")

ENDED = (cpb.REPLICATION_JOB_STATUS_SUCCESS, cpb.REPLICATION_JOB_STATUS_FAILED)

JobArgument = Annotated[str, typer.Argument(metavar="JOB", help="The replication job's ID")]


class JobState(enum.StrEnum):
    waiting = "waiting"
    replicating = "replicating"
    success = "success"
    failed = "failed"


_STATUSES = {
    JobState.waiting: cpb.REPLICATION_JOB_STATUS_WAITING,
    JobState.replicating: cpb.REPLICATION_JOB_STATUS_REPLICATING,
    JobState.success: cpb.REPLICATION_JOB_STATUS_SUCCESS,
    JobState.failed: cpb.REPLICATION_JOB_STATUS_FAILED,
}


def _done(progress: cpb.ReplicationProgress) -> int:
    """Bytes the target holds of the replica: sent, or already held (skipped)."""
    return min(progress.bytes_sent + progress.bytes_skipped, progress.bytes_planned)


def progress_text(job: cpb.ReplicationJob) -> str:
    p = job.progress
    if not p.bytes_planned:
        return ""
    text = f"{size(_done(p))} of {size(p.bytes_planned)}"
    if p.bytes_skipped:
        text += f" ({size(p.bytes_skipped)} already there)"
    return text


def print_job(out: Printer, job: cpb.ReplicationJob) -> None:
    out.fields(
        [
            ("Job", job.job_id),
            ("Status", word(cpb.ReplicationJobStatus, job.status)),
            ("Failure", job.failure_reason),
            ("Way", word(common_pb2.ReplicationWay, job.way)),
            ("Policy", job.policy_id),
            ("From", f"{job.source_region_id} / {job.source_project_id}"),
            ("Backup", job.source_backup_id),
            ("To", f"{job.target_region_id} / {job.target_project_id}"),
            ("Replica", job.replica_id),
            ("Replica name", job.replica_name),
            ("Description", job.replica_description),
            ("Progress", progress_text(job)),
            ("Attempts", str(job.attempts) if job.attempts else ""),
            ("Created", when(job.created_at)),
            ("Started", when(job.started_at)),
            ("Finished", when(job.finished_at)),
        ]
    )


def _step(job: cpb.ReplicationJob) -> Step:
    return Step(
        word(cpb.ReplicationJobStatus, job.status),
        _done(job.progress),
        job.progress.bytes_planned,
        job.status in ENDED,
    )


def follow_job(session: Session, job_id: str) -> cpb.ReplicationJob:
    """Follows a replication job with progress until it ends, and returns it as it ended."""
    return follow(
        session.coordinator().watch_job(job_id),
        _step,
        what=f"replication {job_id[:8]}",
        resume=f"csbs job watch {job_id}",
        console=session.out.err,
    )


def wait_job(session: Session, job: cpb.ReplicationJob) -> cpb.ReplicationJob:
    """Follows a replication job until it ends; a failed job ends the command."""
    final = follow_job(session, job.job_id)
    if final.status == cpb.REPLICATION_JOB_STATUS_FAILED:
        raise Refused(f"replication job {job.job_id} failed: {final.failure_reason}")
    return final


@command(app, "list")
def list_jobs(
    session: Session,
    status: Annotated[JobState | None, typer.Option(help="Only jobs in this status")] = None,
    backup: Annotated[str, typer.Option(help="Only jobs of this source backup")] = "",
    source: Annotated[
        str, typer.Option("--from", help="Only jobs from this region (default: any)")
    ] = "",
    target: Annotated[str, typer.Option("--to", help="Only jobs to this region")] = "",
) -> None:
    """Replication jobs of every region, oldest first."""
    jobs = session.coordinator().list_jobs(
        cpb.ListReplicationJobsRequest(
            status=_STATUSES[status] if status else cpb.REPLICATION_JOB_STATUS_UNSPECIFIED,
            source_backup_id=backup,
            source_region_id=source,
            target_region_id=target,
        )
    )

    def human() -> None:
        session.out.table(
            ("ID", "BACKUP", "FROM", "TO", "STATUS", "PROGRESS", "CREATED"),
            (
                (
                    j.job_id,
                    j.source_backup_id,
                    j.source_region_id,
                    f"{j.target_region_id} / {j.target_project_id}",
                    word(cpb.ReplicationJobStatus, j.status),
                    progress_text(j),
                    when(j.created_at),
                )
                for j in jobs
            ),
            empty="no replication jobs",
        )

    session.out.show_list(jobs, human)


@command(app, "show")
def show(session: Session, job_id: JobArgument) -> None:
    """Show a replication job."""
    job = session.coordinator().get_job(job_id)
    session.out.show(job, lambda: print_job(session.out, job))


@command(app, "watch")
def watch(session: Session, job_id: JobArgument) -> None:
    """Follow a replication job with progress until it ends, then show it (exit 1 if failed)."""
    job = wait_job(session, cpb.ReplicationJob(job_id=job_id))
    session.out.show(job, lambda: print_job(session.out, job))
