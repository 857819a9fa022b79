"""`csbs quota`: a project's quotas in a region, as the real service has them (`backups`, and
`backup_capacity` in GB; -1 is unlimited), and setting one (an operator call)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from csbs.cli.commands import command, group_command
from csbs.cli.context import Session
from csbs.cli.errors import UsageError
from csbs.cli.output import Printer
from csbs.v1 import quotas_pb2 as qpb

app = typer.Typer(
    help="Your project's quotas in the region: `csbs quota` shows them (backups, and their "
    "capacity in GB), `csbs quota set` changes one (an operator call)."
)


class QuotaType(enum.StrEnum):
    backups = "backups"
    backup_capacity = "backup_capacity"


def print_quotas(out: Printer, quotas: qpb.Quotas) -> None:
    out.table(
        ("TYPE", "USED", "QUOTA", "UNIT"),
        (
            (r.type, str(r.used), "unlimited" if r.quota == -1 else str(r.quota), r.unit or "-")
            for r in quotas.resources
        ),
        empty="no quotas",
    )


@group_command(app)
def show(session: Session) -> None:
    """Your quotas in the region, for your main project there or --project: how many backups
    and replicas it holds and may hold, and their capacity in GB (their disks' sizes)."""
    quotas = session.region().get_quotas(session.project_id)

    def human() -> None:
        session.out.line(f"project {quotas.project_id} in region {session.region_id}")
        print_quotas(session.out, quotas)

    session.out.show(quotas, human)


@command(app, "set")
def set_quota(
    session: Session,
    quota_type: Annotated[
        QuotaType, typer.Option("--type", help="Which quota: backups or backup_capacity (GB)")
    ],
    quota: Annotated[
        int, typer.Option("--quota", help="The limit: a count, or GB; -1 for unlimited")
    ],
) -> None:
    """Set one quota of --project in the region (an operator call: --operator-token or
    CSBS_OPERATOR_TOKEN). It holds at once, is kept across restarts, and wins over the cluster
    config's value until that value is edited."""
    if not session.project_id:
        raise UsageError("--project: name the project whose quota to set")
    quotas = session.region().set_quota(session.project_id, quota_type.value, quota)

    def human() -> None:
        session.out.line(f"project {quotas.project_id} in region {session.region_id}")
        print_quotas(session.out, quotas)

    session.out.show(quotas, human)
