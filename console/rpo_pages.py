"""Recovery points (issue 13's question, seen rather than read): per server of the region with
replication and target region, the newest replica there, its backup's age now (the RPO if the
source region were lost now), the worst and median over the range, and a chart of that age over
time (sampled: the worst over a one-second window ending at each instant), from the first job to
the cluster's now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from console.chart import Series, age_text, draw
from console.gateway import CliError
from console.web import render, user_of
from csbs.v1 import coordinator_pb2 as cpb

SAMPLES = 48
# The age at an instant: the worst over a window this short ending there.
WINDOW = timedelta(seconds=1)


def _request(
    source_region_id: str, start: datetime | None, end: datetime | None
) -> cpb.GetRecoveryPointsRequest:
    request = cpb.GetRecoveryPointsRequest(source_region_id=source_region_id)
    if start is not None:
        getattr(request, "from").FromDatetime(start)
    if end is not None:
        request.to.FromDatetime(end)
    return request


def recovery_points(request: Request) -> Response:
    user = user_of(request)
    coordinator = user.api.coordinator()
    try:
        answer = coordinator.get_recovery_points(_request(user.region_id, None, None))
        now = answer.now.ToDatetime(tzinfo=UTC)
        # Each line starts at its server's first job to that region (before it, there is no
        # recovery point to speak of).
        first = {
            (p.server_id, p.target_region_id): p.range_from.ToDatetime(tzinfo=UTC)
            for p in answer.points
            if p.range_from.seconds
        }
        start = min(first.values(), default=now - timedelta(days=1))
        start = min(start, now - timedelta(minutes=1))
        instants = [start + (now - start) * k / SAMPLES for k in range(1, SAMPLES + 1)]
        values: dict[tuple[str, str], list[tuple[datetime, int]]] = {}
        for instant in instants:
            part = coordinator.get_recovery_points(
                _request(user.region_id, instant - WINDOW, instant)
            )
            for point in part.points:
                key = (point.server_id, point.target_region_id)
                if key in first and instant - WINDOW >= first[key]:
                    values.setdefault(key, []).append((instant, point.worst_seconds))
    except CliError as exc:
        return render(request, "rpo.html", user, points=[], chart=None, error=exc.message)
    series = [
        Series(f"{server_id[:8]} → {target}", tuple(line))
        for (server_id, target), line in sorted(values.items())
    ]
    return render(
        request,
        "rpo.html",
        user,
        points=list(answer.points),
        now=answer.now,
        chart=draw(series, start, now) if series else None,
        age=age_text,
        error="",
    )
