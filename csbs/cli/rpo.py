"""`csbs rpo`: the recovery point your replication gives (issue 13): per server and target
region, the newest replica available there, how old its backup is now (the RPO if the source
region were lost now), and the worst and median over a time range."""

from __future__ import annotations

from typing import Annotated

import typer

from csbs.cli.clock import parse_instant
from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.output import when
from csbs.v1 import coordinator_pb2 as cpb


def age_text(seconds: int) -> str:
    """1d 2h 3m, 2h 5m, 4m 10s, 12s."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def register(app: typer.Typer) -> None:
    @command(app, "rpo")
    def rpo(
        session: Session,
        server: Annotated[str, typer.Option("--server", help="Only this server")] = "",
        target: Annotated[str, typer.Option("--target", help="Only this target region")] = "",
        since: Annotated[
            str | None,
            typer.Option("--from", metavar="INSTANT", help="Range start (default: first job)"),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option("--to", metavar="INSTANT", help="Range end (default: now)"),
        ] = None,
    ) -> None:
        """Recovery points: per server with replication and target region, the newest replica
        available there and its backup's age now (the RPO if the source region were lost now),
        and the worst and median age over the range. Source region: --region, if given."""
        request = cpb.GetRecoveryPointsRequest(
            source_region_id=session.region_given,
            target_region_id=target,
            server_id=server,
        )
        if since is not None:
            getattr(request, "from").FromDatetime(parse_instant(since, "--from"))
        if until is not None:
            request.to.FromDatetime(parse_instant(until, "--to"))
        answer = session.coordinator().get_recovery_points(request)

        def human() -> None:
            session.out.fields([("Now", when(answer.now))])
            session.out.table(
                (
                    "SERVER",
                    "SOURCE",
                    "TARGET",
                    "NEWEST REPLICA'S BACKUP",
                    "RPO NOW",
                    "WORST",
                    "MEDIAN",
                    "JOBS OK/FAILED",
                ),
                (
                    (
                        p.server_id,
                        p.source_region_id,
                        p.target_region_id,
                        when(p.backup_time) if p.has_replica else "none yet",
                        age_text(p.age_seconds) if p.has_replica else "-",
                        age_text(p.worst_seconds),
                        age_text(p.median_seconds),
                        f"{p.replications}/{p.failed_replications}",
                    )
                    for p in answer.points
                ),
                empty="no server of yours has replication",
            )

        session.out.show(answer, human)
