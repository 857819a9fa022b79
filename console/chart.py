"""The chart of the recovery point over time, drawn on the server as inline SVG: one line per
server and target region, its recovery point age (sampled) against time. Pure: numbers in,
coordinates out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

WIDTH = 760
HEIGHT = 260
LEFT = 64  # room for the age axis's labels
BOTTOM = 28  # room for the time axis's labels
TOP = 12
RIGHT = 40
COLOURS = ("#526ecc", "#e6525f", "#3ba064", "#f0a030", "#8a5cc8", "#2aa1a9")


@dataclass(frozen=True)
class Series:
    label: str
    # (instant, recovery point age in seconds then)
    values: tuple[tuple[datetime, int], ...]


@dataclass(frozen=True)
class Line:
    label: str
    colour: str
    points: str  # SVG polyline points


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    lines: tuple[Line, ...]
    age_ticks: tuple[Tick, ...]
    time_ticks: tuple[Tick, ...]
    plot: tuple[float, float, float, float]  # x0, y0, x1, y1 of the plotting area


def age_text(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return " ".join(f"{n}{unit}" for n, unit in parts if n)[:8].strip() or "0s"


def draw(series: list[Series], start: datetime, end: datetime) -> Chart:
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    span = max((end - start).total_seconds(), 1.0)
    top = max((age for s in series for _, age in s.values), default=0) or 1

    def x(at: datetime) -> float:
        return x0 + (at - start).total_seconds() / span * (x1 - x0)

    def y(age: int) -> float:
        return y1 - age / top * (y1 - y0)

    lines = tuple(
        Line(
            s.label,
            COLOURS[i % len(COLOURS)],
            " ".join(f"{x(at):.1f},{y(age):.1f}" for at, age in s.values),
        )
        for i, s in enumerate(series)
    )
    age_ticks = tuple(Tick(x0 - 6, y(top * k // 4), age_text(top * k // 4)) for k in range(5))
    time_ticks = tuple(
        Tick(x0 + (x1 - x0) * k / 4, y1 + 18, _time(start, span * k / 4)) for k in range(5)
    )
    return Chart(WIDTH, HEIGHT, lines, age_ticks, time_ticks, (x0, y0, x1, y1))


def _time(start: datetime, offset: float) -> str:
    return (start + timedelta(seconds=offset)).strftime("%m-%d %H:%M")
