"""`csbs region`: the regions of the cluster, and where a region can replicate to (R5, P3)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import UsageError
from csbs.cli.operator_client import OutageClient
from csbs.cli.output import Printer, when
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

app = typer.Typer(
    help="Regions: what each says about itself, replication targets, and outages (operator)."
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
    outages = OutageClient(session.region(region_id).endpoint)
    state = outages.get() if not (out or back) else outages.set(out, reason)
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
