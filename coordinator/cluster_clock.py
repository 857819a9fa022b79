"""The cluster clock: one time for every process. In wall mode it follows the wall clock; in
simulated mode it moves only when the operator advances it, is persisted (never backwards,
across restarts too) and is pushed to every region node, so that every timestamp in the cluster
comes from it."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from coordinator.store import Store
from csbs.clients import RegionNodes
from csbs.clock import SimulatedClock, WallClock
from csbs.errors import CsbsError, FailedPrecondition, InvalidArgument
from csbs.request_ids import CarryingExecutor

log = logging.getLogger(__name__)

SETTING = "simulated_clock_now"
MAX_ADOPTED_LEAD = timedelta(minutes=1)
PUSH_TIMEOUT = 2.0  # seconds a node has to take the new time


class ClusterClock:
    def __init__(self, simulated: bool, store: Store, nodes: RegionNodes) -> None:
        self.simulated = simulated
        self._store = store
        self._nodes = nodes
        self._lock = threading.Lock()
        self._wall = WallClock()
        start = datetime.fromisoformat(store.setting(SETTING, self._wall.now().isoformat()))
        self._simulated = SimulatedClock(start)

    def now(self) -> datetime:
        return self._simulated.now() if self.simulated else self._wall.now()

    def _persist(self, instant: datetime) -> None:
        self._store.put_setting(SETTING, instant.isoformat())

    def move_to(self, instant: datetime) -> datetime:
        """Simulated mode: moves the clock to `instant` (never backwards) and tells every node."""
        if not self.simulated:
            raise FailedPrecondition(
                "the cluster clock follows the wall clock; start the cluster with "
                'clock = "simulated" to move it'
            )
        with self._lock:
            if instant < self._simulated.now():
                raise InvalidArgument(
                    f"to: {instant.isoformat()} is before the cluster clock "
                    f"({self._simulated.now().isoformat()}); it never goes backwards"
                )
            now = self._simulated.set(instant.astimezone(UTC))
            self._persist(now)
        self.push()
        return now

    def push(self) -> None:
        """Tells every node the simulated time, all at once and briefly (best effort: a node
        that does not answer is told next time; a node that was ahead, having kept its own
        time, moves this clock forward)."""
        if not self.simulated:
            return
        now = self._simulated.now()

        def tell(region_id: str) -> datetime | None:
            try:
                return self._nodes.client(region_id).set_clock(now, timeout=PUSH_TIMEOUT)
            except CsbsError as exc:
                log.warning("could not set the clock of region %s: %s", region_id, exc)
                return None

        regions = self._nodes.region_ids
        # The calls carry the request ID of what moves the clock (issue 14).
        with CarryingExecutor(max_workers=max(len(regions), 1)) as pool:
            answers = [a for a in pool.map(tell, regions) if a is not None]
        # A node a little ahead (it kept its own time while starting) moves this clock; one far
        # ahead is a fault, never a way to skip the runs in between.
        near = [a for a in answers if a - now <= MAX_ADOPTED_LEAD]
        for ahead in set(answers) - set(near):
            log.warning(
                "a node's clock is at %s, far ahead of the cluster's %s: ignored", ahead, now
            )
        latest = max(near, default=now)
        if latest > now:
            with self._lock:
                self._persist(self._simulated.set(latest))
