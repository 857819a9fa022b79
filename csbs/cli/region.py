"""`csbs region`: the regions of the cluster, where a region can replicate to (R5, P3), and an
operator's controls of a region: its outage and its storage capacity."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import UsageError
from csbs.cli.operator_client import RegionAdminClient
from csbs.cli.output import Printer, size, when
from csbs.cli.server import parse_bytes
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import quotas_pb2 as qpb
from csbs.v1 import region_node_pb2 as pb

app = typer.Typer(
    help="Regions: what each says about itself, replication targets, and (operator) their "
    "outages and storage capacity."
)


def projects_text(projects: Iterable[common_pb2.Project]) -> str:
    return ", ".join(f"{p.project_id} (main)" if p.main else p.project_id for p in projects)


@command(app, "list")
def list_regions(session: Session) -> None:
    """The regions of the cluster, as each region's node describes itself."""
    infos = [session.region(region_id).region_info() for region_id in session.region_ids]

    def human() -> None:
        session.out.table(
            ("REGION", "NAME", "ACCEPTS REPLICATION", "PROJECTS"),
            (
                (
                    info.region_id,
                    info.display_name,
                    "yes" if info.accepts_replication else "no",
                    projects_text(info.projects),
                )
                for info in infos
            ),
            empty="no regions",
        )

    session.out.show_list(infos, human)


@command(app, "targets")
def targets(session: Session) -> None:
    """The regions this region can replicate to now (only those that accept replication: R5),
    with your projects there; a region that did not answer in time is shown as unreachable."""
    found = session.coordinator().list_targets(session.region_id)

    def human() -> None:
        session.out.table(
            ("REGION", "NAME", "STATUS", "PROJECTS"),
            (
                (t.region_id, t.display_name, target_status(t), projects_text(t.projects))
                for t in found
            ),
            empty=f"no region accepts replication from {session.region_id} now",
        )
        if any(t.unreachable for t in found):
            session.out.hint("An unreachable region cannot be replicated to until it answers.")

    session.out.show_list(found, human)


def target_status(target: cpb.ReplicationTarget) -> str:
    if target.unreachable:
        return f"unreachable: {target.unreachable_reason}"
    return "reachable"


@command(app, "outage")
def outage(
    session: Session,
    region_id: Annotated[str, typer.Argument(metavar="REGION", help="The region's ID")],
    out: Annotated[
        bool,
        typer.Option(
            "--out", help="Take the region down for users and the coordinator (an outage)"
        ),
    ] = False,
    back: Annotated[
        bool, typer.Option("--back", help="Bring the region back into service")
    ] = False,
    reason: Annotated[str, typer.Option(help="With --out: why, shown in every refused call")] = "",
) -> None:
    """Show a region's outage, or (an operator call) take the region out or bring it back.
    While out, its calls answer UNAVAILABLE naming the region and the reason, and its health
    says NOT_SERVING; replication jobs into or out of it retry, and resume once it is back.
    The outage lasts across restarts of the region's node until it is brought back."""
    if out and back:
        raise UsageError("give --out or --back, not both")
    if reason and not out:
        raise UsageError("--reason goes with --out")
    admin = RegionAdminClient(session.region(region_id).endpoint)
    state = admin.outage() if not (out or back) else admin.set_outage(out, reason)
    session.out.show(state, lambda: print_outage(session.out, state))
    if state.out and not session.out.json:
        session.out.hint(f"Bring it back with: csbs region outage {region_id} --back")


def print_outage(out: Printer, state: pb.RegionOutage) -> None:
    out.fields(
        [
            ("Region", state.region_id),
            (
                "State",
                "out (UNAVAILABLE to users and the coordinator)" if state.out else "in service",
            ),
            ("Reason", state.reason),
            ("Since", when(state.since)),
        ]
    )


@command(app, "capacity")
def capacity(
    session: Session,
    region: Annotated[
        str | None, typer.Argument(help="The region (default: --region, else the first)")
    ] = None,
    set_to: Annotated[
        str | None,
        typer.Option(
            "--set",
            metavar="BYTES",
            help="The new capacity, such as 500GiB or 1073741824; 0 for unlimited",
        ),
    ] = None,
) -> None:
    """A region's storage capacity and what its backups and replicas use of it (an operator
    call: --operator-token or CSBS_OPERATOR_TOKEN); with --set, change it. Beyond it, backups
    and replications into the region fail as on a full disk. A value set here is kept across
    restarts and wins over the cluster config's until that value is edited."""
    client = session.region(region or session.region_id)
    if set_to is None:
        answer = client.get_capacity()
    else:
        answer = client.set_capacity(parse_bytes(set_to, "--set"))
    session.out.show(answer, lambda: print_capacity(session, answer))


def print_capacity(session: Session, capacity: qpb.RegionCapacity) -> None:
    limit = capacity.capacity_bytes
    used = f"{size(capacity.used_bytes)} ({capacity.used_bytes} bytes)"
    if limit:
        used += f", {capacity.used_bytes * 100 / limit:.0f}%"
    session.out.fields(
        [
            ("Region", capacity.region_id),
            ("Capacity", f"{size(limit)} ({limit} bytes)" if limit else "unlimited"),
            ("Used", used),
            (
                "Set by",
                "the operator (kept until the config's capacity_bytes is edited)"
                if capacity.set_by_operator
                else "the cluster config",
            ),
        ]
    )
