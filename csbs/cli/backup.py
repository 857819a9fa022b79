"""`csbs backup`: backups and replicas of a region: create, list, show, delete, restore, and
replicate one to another region (M1)."""

from __future__ import annotations

import enum
import uuid
from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import Refused
from csbs.cli.job import print_job, wait_job
from csbs.cli.output import Printer, size, when, word
from csbs.cli.progress import Step, follow
from csbs.cli.server import disks_text, print_server, short, wait_server
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

app = typer.Typer(help="Backups (and replicas made in other regions): make, restore, replicate.")

SETTLED = (pb.BACKUP_STATUS_AVAILABLE, pb.BACKUP_STATUS_ERROR)


class BackupState(enum.StrEnum):
    creating = "creating"
    available = "available"
    error = "error"
    replicating = "replicating"
    restoring = "restoring"


_STATUSES = {
    BackupState.creating: pb.BACKUP_STATUS_CREATING,
    BackupState.available: pb.BACKUP_STATUS_AVAILABLE,
    BackupState.error: pb.BACKUP_STATUS_ERROR,
    BackupState.replicating: pb.BACKUP_STATUS_REPLICATING,
    BackupState.restoring: pb.BACKUP_STATUS_RESTORING,
}

BackupArgument = Annotated[str, typer.Argument(metavar="BACKUP", help="The backup's ID")]


def origin_text(backup: pb.Backup) -> str:
    o = backup.origin
    if not o.replicated:
        return "made here"
    return (
        f"replica of backup {o.source_backup_id} of region {o.source_region_id} "
        f"({word(common_pb2.ReplicationWay, o.way)}, job {o.replication_job_id})"
    )


def print_backup(out: Printer, backup: pb.Backup) -> None:
    progress = ""
    if backup.status == pb.BACKUP_STATUS_CREATING and backup.bytes_to_read:
        progress = f"{size(backup.bytes_read)} of {size(backup.bytes_to_read)} read"
    out.fields(
        [
            ("ID", backup.backup_id),
            ("Name", backup.name),
            ("Description", backup.description),
            ("Project", backup.project_id),
            ("Status", word(pb.BackupStatus, backup.status)),
            ("Progress", progress),
            ("Error", backup.error_reason),
            ("Server", backup.server_id),
            ("Server type", word(common_pb2.ServerType, backup.server_type)),
            ("Size", size(backup.size_bytes)),
            ("Stored", size(backup.bytes_stored) + " new" if backup.bytes_stored else ""),
            ("Origin", origin_text(backup)),
            ("Policy", backup.policy_id),
            ("Images", ", ".join(backup.image_ids)),
            ("Created", when(backup.created_at)),
            ("Completed", when(backup.completed_at)),
        ]
    )
    out.line()
    out.table(
        ("DISK", "ID", "SIZE", "SYSTEM"),
        (
            (str(d.disk_index), d.disk_id, size(d.size_bytes), "yes" if d.system else "")
            for d in backup.disks
        ),
        empty="no disks",
    )
    if backup.replications:
        out.line()
        out.table(
            ("REPLICATED TO", "PROJECT", "REPLICA", "STATUS", "JOB", "UPDATED"),
            (
                (
                    r.target_region_id,
                    r.target_project_id,
                    r.replica_id + (" (deleted)" if r.replica_deleted else ""),
                    word(pb.ReplicationRecordStatus, r.status)
                    + (f": {r.failure_reason}" if r.failure_reason else ""),
                    r.job_id,
                    when(r.updated_at),
                )
                for r in backup.replications
            ),
            empty="",
        )


def _step(backup: pb.Backup) -> Step:
    return Step(
        word(pb.BackupStatus, backup.status),
        backup.bytes_read,
        backup.bytes_to_read,
        backup.status in SETTLED,
    )


def follow_backup(
    session: Session, backup_id: str, region_id: str | None = None, project_id: str | None = None
) -> pb.Backup:
    """Follows a backup being taken, with progress, until it is available or in error, and
    returns it as it ended; in the command's region and project unless others are given."""
    region_id = region_id or session.region_id
    project_id = session.project_id if project_id is None else project_id
    return follow(
        session.region(region_id).watch_backup(project_id, backup_id),
        _step,
        what=f"backup {short(backup_id)}",
        resume=session.command_line(
            "backup", "show", backup_id, "--wait", region_id=region_id, project_id=project_id
        ),
        console=session.out.err,
    )


def wait_backup(session: Session, backup: pb.Backup) -> pb.Backup:
    """Follows a backup being taken until it is available; an error ends the command."""
    final = follow_backup(session, backup.backup_id)
    if final.status == pb.BACKUP_STATUS_ERROR:
        raise Refused(f"backup {backup.backup_id} failed: {final.error_reason}")
    return final


@command(app, "create")
def create(
    session: Session,
    server_id: Annotated[str, typer.Argument(metavar="SERVER", help="The server to back up")],
    disk: Annotated[
        list[int] | None,
        typer.Option(help="Back up only this disk (by index; repeat) (default: every disk)"),
    ] = None,
    name: Annotated[str, typer.Option(help="The backup's name (P1) (default: made up)")] = "",
    description: Annotated[str, typer.Option(help="At most 255 characters (P2)")] = "",
    request_id: Annotated[
        str, typer.Option(help="Idempotency key: a retry with the same key returns the first")
    ] = "",
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until it is available, with progress")
    ] = False,
) -> None:
    """Back up a server (all its disks, or the chosen ones: R1b)."""
    backup = session.region().create_backup(
        pb.CreateBackupRequest(
            project_id=session.project_id,
            server_id=server_id,
            name=name,
            description=description,
            disk_indexes=disk or [],
            request_id=request_id or uuid.uuid4().hex,
        )
    )
    if wait and backup.status not in SETTLED:
        backup = wait_backup(session, backup)
    session.out.show(backup, lambda: print_backup(session.out, backup))


@command(app, "list")
def list_backups(
    session: Session,
    server: Annotated[str, typer.Option(help="Only this server's backups")] = "",
    status: Annotated[BackupState | None, typer.Option(help="Only backups in this status")] = None,
) -> None:
    """The backups and replicas of the project."""
    backups = session.region().list_backups(
        session.project_id,
        server_id=server,
        status=_STATUSES[status] if status else pb.BACKUP_STATUS_UNSPECIFIED,
    )

    def human() -> None:
        session.out.table(
            ("ID", "NAME", "STATUS", "SERVER", "DISKS", "ORIGIN", "CREATED"),
            (
                (
                    b.backup_id,
                    b.name,
                    word(pb.BackupStatus, b.status),
                    b.server_id,
                    disks_text(list(b.disks)),
                    f"from {b.origin.source_region_id}" if b.origin.replicated else "here",
                    when(b.created_at),
                )
                for b in backups
            ),
            empty=f"no backups in {session.project_label} of region {session.region_id}",
        )

    session.out.show_list(backups, human)


@command(app, "show")
def show(
    session: Session,
    backup_id: BackupArgument,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="If it is being taken or copied, wait until it is available"),
    ] = False,
) -> None:
    """Show a backup: its disks, where it came from, where it was replicated to."""
    backup = session.region().get_backup(session.project_id, backup_id)
    if wait and backup.status not in SETTLED:
        backup = wait_backup(session, backup)
    session.out.show(backup, lambda: print_backup(session.out, backup))


@command(app, "delete")
def delete(session: Session, backup_id: BackupArgument) -> None:
    """Delete a backup (not while an image is made from it), freeing what no other needs."""
    answer = session.region().delete_backup(session.project_id, backup_id)
    session.out.show(
        answer,
        lambda: session.out.line(f"deleted backup {backup_id}; freed {size(answer.bytes_freed)}"),
    )


@command(app, "restore")
def restore(
    session: Session,
    backup_id: BackupArgument,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the server is active again")
    ] = False,
) -> None:
    """Write a backup's disks back onto its server (never a replica: R2)."""
    server = session.region().restore_backup(session.project_id, backup_id)
    if wait:
        server = wait_server(session, server, "restore")
    session.out.show(server, lambda: print_server(session.out, server))
    if not wait:
        follow_it = session.command_line("server", "show", server.server_id, "--wait")
        session.out.hint(f"The server is being restored; follow with `{follow_it}`")


@command(app, "verify")
def verify(session: Session, backup_id: BackupArgument) -> None:
    """Read every chunk of a backup and check it against its hash; a backup with a damaged or
    missing chunk becomes error, saying how many (exit 1)."""
    last = follow(
        session.region().verify_backup(session.project_id, backup_id),
        lambda p: Step("verifying", p.bytes_checked, p.bytes_total, p.done),
        what=f"check of backup {short(backup_id)}",
        resume=session.command_line("backup", "verify", backup_id),
        console=session.out.err,
    )
    backup = last.backup
    session.out.show(
        last,
        lambda: session.out.line(
            f"backup {backup_id}: {last.chunks_checked} chunks ({size(last.bytes_checked)}) "
            f"checked, {last.chunks_bad} damaged or missing; status "
            f"{word(pb.BackupStatus, backup.status)}"
        ),
    )
    if last.chunks_bad:
        raise Refused(backup.error_reason)


@command(app, "replicate")
def replicate(
    session: Session,
    backup_id: BackupArgument,
    to: Annotated[str, typer.Option("--to", help="The target region (R5: it must accept)")],
    to_project: Annotated[
        str, typer.Option(help="Your project there (P3) (default: your main project there)")
    ] = "",
    name: Annotated[
        str, typer.Option(help="The replica's name (P1) (default: manual_rep_from_BACKUP)")
    ] = "",
    description: Annotated[str, typer.Option(help="At most 255 characters (P2)")] = "",
    idempotency_token: Annotated[
        str, typer.Option(help="A retry with the same token returns the same job")
    ] = "",
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the replica is complete")
    ] = False,
) -> None:
    """Replicate a backup to another region (M1): a replication job copies it in the
    background; follow it with --wait or `csbs job watch JOB`."""
    job = session.coordinator().replicate(
        cpb.ReplicateBackupRequest(
            source_region_id=session.region_id,
            source_project_id=session.project_id,
            backup_id=backup_id,
            target_region_id=to,
            target_project_id=to_project,
            name=name,
            description=description,
            idempotency_token=idempotency_token or uuid.uuid4().hex,
        )
    )
    if wait:
        job = wait_job(session, job)
    session.out.show(job, lambda: print_job(session.out, job))
    if job.status == cpb.REPLICATION_JOB_STATUS_SUCCESS:
        make_image = session.command_line(
            "image",
            "create",
            job.replica_id,
            region_id=job.target_region_id,
            project_id=job.target_project_id,
        )
        session.out.hint(f"Make an image of the replica with `{make_image}`")
    elif not wait:
        session.out.hint(f"Follow it with `csbs job watch {job.job_id}`")
