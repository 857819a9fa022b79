"""`csbs clock`: the cluster clock every process takes its time from: show it, and (on a cluster
started with clock = "simulated") move it forward, running every policy run that falls due."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import UsageError
from csbs.cli.output import Printer, when
from csbs.v1 import coordinator_pb2 as cpb

app = typer.Typer(help="The cluster clock: show it, move a simulated one forward.")

_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)


def parse_duration(text: str, option: str) -> int:
    """Seconds in a duration such as 30d, 12h, 90m, 1d12h or 3600 (a bare number is seconds)."""
    spoken = text.strip().lower()
    if spoken.isascii() and spoken.isdigit():
        return int(spoken)
    match = _DURATION.fullmatch(spoken)
    if not spoken or match is None:
        raise UsageError(
            f"{option}: expected a duration such as 30d, 12h, 90m, 1d12h or seconds, got {text!r}"
        )
    return sum(int(n) * s for n, s in zip(match.groups(), _UNIT_SECONDS.values(), strict=True) if n)


def parse_instant(text: str, option: str) -> datetime:
    """An ISO 8601 instant; one without a UTC offset is taken as UTC."""
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: expected an ISO 8601 instant such as 2030-01-31T02:00:00Z, got {text!r}"
        ) from None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


def print_clock(out: Printer, clock: cpb.ClockState) -> None:
    out.fields(
        [
            ("Now", when(clock.now)),
            (
                "Clock",
                "simulated: it moves only with `csbs clock advance`"
                if clock.simulated
                else "wall clock",
            ),
        ]
    )


@command(app, "show")
def show(session: Session) -> None:
    """The cluster's time now, and whether its clock is simulated or the wall clock."""
    clock = session.coordinator().get_clock()
    session.out.show(clock, lambda: print_clock(session.out, clock))


@command(app, "advance")
def advance(
    session: Session,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", metavar="DURATION", help="Move it forward by 30d, 12h, 90m, 1d12h or seconds"
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", metavar="INSTANT", help="Move it to an ISO 8601 instant (UTC if no offset)"
        ),
    ] = None,
) -> None:
    """Move a simulated cluster clock forward (an operator call): every policy run that falls
    due in between runs, in order, and has ended when this returns; prints the new time."""
    if (by is None) == (to is None):
        raise UsageError("give --by DURATION or --to INSTANT (one of them)")
    request = cpb.AdvanceClockRequest()
    if by is not None:
        request.by_seconds = parse_duration(by, "--by")
    else:
        assert to is not None
        request.to.FromDatetime(parse_instant(to, "--to"))
    clock = session.coordinator().advance_clock(request)
    session.out.show(clock, lambda: print_clock(session.out, clock))
