"""`csbs region`: the regions of the cluster, and where a region can replicate to (R5, P3)."""

from __future__ import annotations

from collections.abc import Iterable

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb

app = typer.Typer(help="Regions: what each says about itself, and replication targets.")


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
