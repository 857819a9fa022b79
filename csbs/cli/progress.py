"""Waiting for long work (a backup, a replication, a restore, a server made from an image): a live
progress bar with bytes, rate and time left on a terminal (rich.progress), plain progress lines
when stderr is not a terminal. Ctrl-C stops the waiting, never the work, and says how to follow
it again."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TypeVar

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from csbs.cli.errors import Interrupted, Refused
from csbs.cli.output import size

T = TypeVar("T")

LINE_EVERY = 1.0  # seconds between two plain progress lines of the same status


@dataclass(frozen=True)
class Step:
    """One report of the work: its status in words, bytes done of bytes in all (0: not known
    yet), and whether it has ended."""

    status: str
    done: int
    total: int
    ended: bool


class _RateColumn(ProgressColumn):
    """Bytes a second: rich's recent-samples speed while there are samples, else the average
    since the waiting began (short work may report only once or twice)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:
            speed = task.completed / task.elapsed
        if not speed:
            return Text("?", style="progress.data.speed")
        return Text(f"{filesize.decimal(int(speed))}/s", style="progress.data.speed")


class _Bar:
    """The live bar on a terminal."""

    def __init__(self, console: Console, what: str) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._task: TaskID = self._progress.add_task(what, total=None, status="waiting")

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        # Safe at any point of start(), which a Ctrl-C may cut short: the display must end,
        # or what is printed next would be drawn over by the bar.
        self._progress.stop()

    def show(self, step: Step) -> None:
        total = step.total or (step.done if step.ended else None)
        self._progress.update(
            self._task, total=total, completed=step.done, status=step.status, refresh=step.ended
        )


class _Lines:
    """Plain progress lines when stderr is not a terminal: on every change of status, at most
    every LINE_EVERY seconds between, and one at the end."""

    def __init__(self, console: Console, what: str) -> None:
        self._file = console.file
        self._what = what
        self._started = time.monotonic()
        self._first: tuple[float, int] | None = None
        self._printed_at = 0.0
        self._status = ""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def show(self, step: Step) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step.done)
        due = now - self._printed_at >= LINE_EVERY
        if not (step.ended or step.status != self._status or due):
            return
        self._status = step.status
        self._printed_at = now
        self._file.write(self._line(step, now) + "\n")
        self._file.flush()

    def _line(self, step: Step, now: float) -> str:
        if step.ended:
            took = now - self._started
            moved = f"{size(step.total or step.done)} " if step.total or step.done else ""
            return f"{self._what}: {step.status}, {moved}in {took:.1f}s"
        line = f"{self._what}: {step.status}"
        if step.total:
            percent = 100 * step.done // step.total
            line += f", {size(step.done)} of {size(step.total)} ({percent}%)"
            assert self._first is not None
            since, first_done = self._first
            if now > since and step.done > first_done:
                rate = (step.done - first_done) / (now - since)
                left = (step.total - step.done) / rate
                line += f", {filesize.decimal(int(rate))}/s, {left:.0f}s left"
        return line


def follow(
    updates: Iterator[T],
    step: Callable[[T], Step],
    *,
    what: str,
    resume: str,
    console: Console,
) -> T:
    """Shows every update until the last one, and returns it. On Ctrl-C the watch is cancelled
    and Interrupted says how to follow the work again (`resume`, a command)."""
    sys.stdout.flush()
    view = _Bar(console, what) if console.is_terminal else _Lines(console, what)
    last: T | None = None
    known_total = 0
    try:
        try:
            view.start()
            for update in updates:
                last = update
                now = step(update)
                known_total = max(known_total, now.total)
                if now.ended and not now.total:
                    # Some work reports no figures once it has ended: the last ones it gave.
                    now = Step(now.status, known_total, known_total, True)
                view.show(now)
        finally:
            view.stop()
    except KeyboardInterrupt:
        if isinstance(updates, Generator):
            updates.close()  # cancels the watch call
        raise Interrupted(
            f"stopped waiting; the {what} goes on. Follow it again with `{resume}`"
        ) from None
    if last is None:
        raise Refused(f"the watch of the {what} ended without an answer; try `{resume}`")
    return last
