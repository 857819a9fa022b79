"""The scheduler of the policies' runs on the cluster clock: what falls due next, the claim of
a due run, and the loop that runs them (wall mode) or AdvanceClock (simulated mode).

Every due run exactly once: a due run is recorded in the same transaction that moves its
policy's next time of that kind past it (claim), so a crash leaves either both or neither, and
a time already moved on is never claimed again. AdvanceClock first lets the runs a crash left
RUNNING end (the runner's recovery), then runs what falls due in order, each to its end;
backups before replications at the same instant."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime

from coordinator.cluster_clock import ClusterClock
from coordinator.policy_models import (
    KIND_BACKUP,
    KIND_REPLICATION,
    TRIGGER_SCHEDULE,
    Policy,
    PolicyRun,
)
from coordinator.policy_runner import WORK_TIMEOUT, PolicyRunner
from coordinator.policy_store import PolicyStore
from coordinator.sim_waits import SimulatedWaits

log = logging.getLogger(__name__)


def schedule_times(policy: Policy, after: datetime) -> tuple[float | None, float | None]:
    """When the policy's next backup and replication runs fall due after `after` (None: never,
    as for a disabled policy or replication rule)."""
    backup = policy.backup_schedule.next_after(after) if policy.enabled else None
    repl = policy.replication
    replication = (
        repl.schedule.next_after(after) if policy.enabled and repl and repl.enabled else None
    )
    return (
        None if backup is None else backup.timestamp(),
        None if replication is None else replication.timestamp(),
    )


def following_time(policy: Policy, kind: int, due: datetime) -> float | None:
    """When the run of this kind after the one due at `due` falls due."""
    schedule = (
        policy.backup_schedule
        if kind == KIND_BACKUP
        else (policy.replication.schedule if policy.replication else None)
    )
    return schedule.next_after(due).timestamp() if schedule else None


def earliest_due(
    due_times: Iterable[tuple[str, float | None, float | None]], until: datetime | None
) -> tuple[datetime, str, int] | None:
    """The earliest (time, policy, kind) among (policy, next backup, next replication), at or
    before `until` if given; backups before replications at the same instant."""
    due: list[tuple[float, int, str]] = []
    for policy_id, backup_at, repl_at in due_times:
        if backup_at is not None:
            due.append((backup_at, KIND_BACKUP, policy_id))
        if repl_at is not None:
            due.append((repl_at, KIND_REPLICATION, policy_id))
    if not due:
        return None
    at, kind, policy_id = min(due)
    when = datetime.fromtimestamp(at, UTC)
    if until is not None and when > until:
        return None
    return when, policy_id, kind


class PolicyScheduler:
    """Runs the policies' runs as they fall due (see the module's docstring)."""

    def __init__(
        self,
        policies: PolicyStore,
        runner: PolicyRunner,
        clock: ClusterClock,
        waits: SimulatedWaits,
    ) -> None:
        self._policies = policies
        self._waits = waits
        self._runner = runner
        self._clock = clock
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._advance_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Wall mode: follows the schedules in a thread (simulated mode: AdvanceClock)."""
        if not self._clock.simulated:
            self._thread = threading.Thread(target=self._loop, name="scheduler")
            self._thread.daemon = True
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """A policy changed: look again at what falls due next."""
        with self._wake:
            self._wake.notify_all()

    def _next_due(self, until: datetime | None) -> tuple[datetime, str, int] | None:
        return earliest_due(self._policies.due_times(), until)

    def _claim(self, policy_id: str, kind: int, due: datetime) -> tuple[Policy, PolicyRun] | None:
        """Records the run due at `due` and moves the policy's next time of this kind past it,
        in one transaction: a crash leaves either both or neither, so every due run is recorded
        exactly once. None if the policy is gone or this time was taken already."""
        with self._policies.transaction() as conn:
            policy = self._policies.load(policy_id, conn)
            if policy is None:
                return None
            current = self._policies.next_at(conn, policy_id, kind)
            if current is None or current != due.timestamp():
                return None
            self._policies.move_next_at(conn, policy_id, kind, following_time(policy, kind, due))
            run = self._runner.new_run(conn, policy, kind, TRIGGER_SCHEDULE, due)
        return policy, run

    def _run_due(self, policy_id: str, kind: int, due: datetime, wait: bool) -> None:
        claimed = self._claim(policy_id, kind, due)
        if claimed is not None:
            self._runner.carry_out(*claimed, wait=wait)

    def _loop(self) -> None:
        """Wall mode: runs what falls due, as it falls due."""
        while not self._stop.is_set():
            try:
                due = self._next_due(None)
                now = self._clock.now()
                if due is not None and due[0] <= now:
                    self._run_due(due[1], due[2], due[0], wait=False)
                    continue
                wait = 60.0 if due is None else min(60.0, (due[0] - now).total_seconds())
                with self._wake:
                    self._wake.wait(timeout=max(wait, 0.01))
            except Exception:
                log.exception("the scheduler failed; trying again")
                self._stop.wait(1.0)

    def advance(self, to: datetime) -> datetime:
        """Simulated mode: moves the clock to `to`, running everything that falls due in
        between, in order, each to its end before the clock moves on; a replication job across
        a limited link takes the simulated time its bytes need, the clock stepping from one
        event to the next (coordinator/sim_waits.py). What still needs time at `to` (a transfer
        not done yet) goes on at the next AdvanceClock."""
        if not self._clock.simulated:
            self._clock.move_to(to)  # refuses with the reason
        with self._advance_lock:
            self._runner.wait_recovered()  # the runs a crash left going end first, in order
            if to < self._clock.now():
                self._clock.move_to(to)  # refuses: never backwards
            self._waits.forget_horizons()
            while True:
                self._waits.settle(WORK_TIMEOUT)
                due = self._next_due(to)
                wake = self._waits.next_wakeup()
                if wake is not None and wake > to:
                    wake = None
                if due is None and wake is None:
                    break
                if due is not None and (wake is None or due[0] <= wake):
                    when, policy_id, kind = due
                    self._move(max(when, self._clock.now()))
                    # The jobs behind the clock catch up before the run's own jobs take the
                    # links they share.
                    self._waits.settle(WORK_TIMEOUT)
                    self._run_due(policy_id, kind, when, wait=True)
                else:
                    assert wake is not None
                    self._move(wake)
            now = self._move(to)
            self._waits.settle(WORK_TIMEOUT)
            return now

    def _move(self, instant: datetime) -> datetime:
        now = self._clock.move_to(max(instant, self._clock.now()))
        self._waits.moved()
        return now
