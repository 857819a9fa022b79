"""`csbs link`: the links between regions (an operator's controls, issue 13): bandwidth, latency
and whether a link is cut, per ordered pair of regions; applied at once to every replication
job across the link."""

from __future__ import annotations

from typing import Annotated

import typer

from csbs.bandwidth import format_bandwidth, parse_bandwidth
from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import UsageError
from csbs.v1 import coordinator_pb2 as cpb

app = typer.Typer(help="Links between regions: bandwidth, latency, cut (operator).")

Source = Annotated[str, typer.Argument(metavar="SOURCE", help="The region the link leaves")]
Target = Annotated[str, typer.Argument(metavar="TARGET", help="The region the link reaches")]


def link_row(link: cpb.Link) -> tuple[str, str, str, str, str]:
    return (
        link.source_region_id,
        link.target_region_id,
        format_bandwidth(link.bandwidth_bytes_per_second),
        f"{link.latency_ms} ms",
        "CUT" if link.cut else "up",
    )


COLUMNS = ("SOURCE", "TARGET", "BANDWIDTH", "LATENCY", "STATE")


@command(app, "list")
def list_links(session: Session) -> None:
    """The links set between regions (a pair not listed is as fast as this machine)."""
    links = session.coordinator().list_links()
    session.out.show_list(
        links,
        lambda: session.out.table(
            COLUMNS, (link_row(k) for k in links), empty="no links set: every pair is unlimited"
        ),
    )


@command(app, "set")
def set_link(
    session: Session,
    source: Source,
    target: Target,
    bandwidth: Annotated[
        str,
        typer.Option(
            "--bandwidth",
            metavar="RATE",
            help="100MB/s, 100Mbit/s, bytes a second, or unlimited (decimal units)",
        ),
    ] = "unlimited",
    latency_ms: Annotated[
        int, typer.Option("--latency-ms", min=0, help="Added to every call across the link")
    ] = 0,
    cut: Annotated[
        bool, typer.Option("--cut/--up", help="Cut the link (partition) or restore it")
    ] = False,
) -> None:
    """Set the link SOURCE -> TARGET: every value given, the others back to their defaults."""
    try:
        rate = parse_bandwidth(bandwidth)
    except ValueError as exc:
        raise UsageError(f"--bandwidth: {exc}") from None
    link = session.coordinator().set_link(
        cpb.Link(
            source_region_id=source,
            target_region_id=target,
            bandwidth_bytes_per_second=rate,
            latency_ms=latency_ms,
            cut=cut,
        )
    )
    session.out.show(link, lambda: session.out.table(COLUMNS, [link_row(link)], empty=""))


@command(app, "clear")
def clear_link(session: Session, source: Source, target: Target) -> None:
    """Back to no link set for SOURCE -> TARGET: unlimited, no latency, not cut."""
    answer = session.coordinator().clear_link(source, target)

    def human() -> None:
        session.out.line(
            f"link {source} -> {target} cleared"
            if answer.cleared
            else f"no link was set for {source} -> {target}"
        )

    session.out.show(answer, human)
