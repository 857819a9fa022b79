"""What AdvanceClock steps through in simulated mode (issue 13): the replication jobs and the
policy runs waiting for them, and when each next needs the cluster clock to have moved.

A job crossing a limited link (coordinator/transit.py) or waiting to try again after a simulated
fault (a cut link) waits for the cluster clock, not for the wall clock: it says until which
instant (`wait_until`) and how far the clock may jump without passing anything it would do
(its `horizon`: the end of its transfer, when it is alone on its link). AdvanceClock moves the
clock from event to event: after each move it waits until every job is either waiting for the
clock again, or queued behind jobs that are, or ended, and until every run whose jobs have
ended has recorded its end (`settle`); then it moves to the earliest instant anything waits
for (`next_wakeup`) or a policy falls due, whichever comes first. So a transfer takes the
simulated time its bytes need on its link, however fast this machine is, and what happens at
a simulated instant (a link cut, a due run) acts on it as it would in reality.

Everything here is a leaf lock (one condition); the cluster clock's own lock is taken under it
only to read the time."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from csbs.clock import Clock

log = logging.getLogger(__name__)

QUEUED, BUSY, IDLE = "queued", "busy", "idle"
POLL = 0.5  # seconds between two looks at the stop event while waiting for the clock


@dataclass
class _Job:
    state: str = QUEUED
    # The job's link is not as fast as this machine (or it waited for the clock once): it
    # takes simulated time, and AdvanceClock steps through it. Another job runs at the
    # machine's speed and is waited for only by the run that started it, if AdvanceClock did.
    on_clock: bool = False
    until: datetime | None = None
    horizon: datetime | None = None


class SimulatedWaits:
    """The jobs and runs of this coordinator, as AdvanceClock needs to see them (see the
    module's docstring). In wall mode the same calls are made and nothing waits on them."""

    def __init__(self, clock: Clock, job_workers: int) -> None:
        self._clock = clock
        self._workers = job_workers
        self._cond = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._runs: dict[str, tuple[str, ...]] = {}

    # -- jobs -------------------------------------------------------------------------------------
    def job_queued(self, job_id: str, on_clock: bool) -> None:
        with self._cond:
            self._jobs.setdefault(job_id, _Job(on_clock=on_clock))
            self._cond.notify_all()

    def job_working(self, job_id: str) -> None:
        with self._cond:
            job = self._jobs.setdefault(job_id, _Job())
            job.state = BUSY
            self._cond.notify_all()

    def job_ended(self, job_id: str) -> None:
        with self._cond:
            self._jobs.pop(job_id, None)
            self._cond.notify_all()

    def wait_until(
        self, job_id: str, until: datetime, horizon: datetime, stop: threading.Event
    ) -> bool:
        """The job waits until the cluster clock reaches `until`; AdvanceClock may move the
        clock as far as `horizon` (>= until) in one step for it. False if `stop` was set."""
        with self._cond:
            job = self._jobs.setdefault(job_id, _Job())
            job.state, job.until, job.horizon = IDLE, until, max(horizon, until)
            job.on_clock = True
            self._cond.notify_all()
            try:
                while self._clock.now() < until and not stop.is_set():
                    self._cond.wait(POLL)
            finally:
                job.state, job.until, job.horizon = BUSY, None, None
        return not stop.is_set()

    # -- runs -------------------------------------------------------------------------------------
    def run_waiting(self, run_id: str, job_ids: tuple[str, ...]) -> None:
        """A run waits for these jobs to end, then records its own end (`run_done`)."""
        with self._cond:
            self._runs[run_id] = job_ids
            self._cond.notify_all()

    def run_done(self, run_id: str) -> None:
        with self._cond:
            self._runs.pop(run_id, None)
            self._cond.notify_all()

    # -- AdvanceClock ---------------------------------------------------------------------------
    def moved(self) -> None:
        """The cluster clock moved: whoever waits for it looks again."""
        with self._cond:
            self._cond.notify_all()

    def _settled(self) -> bool:
        waited_for = {job_id for job_ids in self._runs.values() for job_id in job_ids}
        counted = [
            job for job_id, job in self._jobs.items() if job.on_clock or job_id in waited_for
        ]
        running = [job for job in counted if job.state != QUEUED]
        now = self._clock.now()
        # A job whose instant has come is about to wake: busy.
        if any(job.state == BUSY or (job.until or now) <= now for job in running):
            return False
        # A queued job starts as soon as a worker is free; while every worker holds a job,
        # it waits for them.
        started = [job for job in self._jobs.values() if job.state != QUEUED]
        if len(running) < len(counted) and (
            len(started) < self._workers or any(job.state == BUSY for job in started)
        ):
            return False
        # A run whose jobs have all ended (are no longer here) is recording its end; one with
        # a job still here waits for it.
        return all(
            any(job_id in self._jobs for job_id in job_ids) for job_ids in self._runs.values()
        )

    def settle(self, timeout: float) -> bool:
        """Waits until nothing runs but what waits for the clock (see the module's docstring);
        False if that took longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._settled():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("AdvanceClock: jobs or runs still busy after %.0fs", timeout)
                    return False
                self._cond.wait(min(left, POLL))
        return True

    def forget_horizons(self) -> None:
        """The world may have changed since the horizons were told (a link cut or made
        faster, an outage, a fault rule): until each job says again, the clock moves for it
        only as far as its next instant."""
        with self._cond:
            for job in self._jobs.values():
                if job.state == IDLE:
                    job.horizon = job.until

    def next_wakeup(self) -> datetime | None:
        """The farthest the clock may move in one step for the jobs waiting for it: the
        earliest of their horizons (None when no job waits for the clock)."""
        with self._cond:
            horizons = [
                job.horizon
                for job in self._jobs.values()
                if job.state == IDLE and job.horizon is not None
            ]
        return min(horizons, default=None)
