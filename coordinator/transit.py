"""What a link does to one attempt of a replication job (issue 13): every call the job makes to
the target region crosses the link (a cut link fails it UNAVAILABLE, a latency delays it), and
its chunks cross at the link's bandwidth, shared with every other job on the same link.

Chunks are relayed in batches of about one second of the link's bandwidth; a batch is sent,
then the attempt waits until the instant the batch has crossed (the link is a pipe: a batch
starts when the one before it on the link, of any job, has crossed). In wall mode the wait is
real; in simulated mode it is on the cluster clock (coordinator/sim_waits.py), so a transfer
takes the simulated time its bytes need however fast this machine is, and what is visible
(the job's progress, the replica's chunks) never runs ahead of the clock by more than one
batch. The attempt keeps its own time: a transfer that goes on while the clock jumps forward is
continuous, it does not start again from the new now."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from coordinator.links import Link, Links
from coordinator.sim_waits import SimulatedWaits
from csbs.clients import RELAY_BATCH, coordinator_stopping, link_cut
from csbs.clock import Clock

BATCH_SECONDS = 1.0  # a relayed batch holds about this many seconds of the link's bandwidth


class LinkPipes:
    """When each link is next free, across all the jobs on it (one lock, a leaf)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free_at: dict[tuple[str, str], datetime] = {}
        self._users: dict[tuple[str, str], int] = {}

    def reserve(self, pair: tuple[str, str], start: datetime, seconds: float) -> datetime:
        """The batch ready at `start` crosses after the link is free: the instant it has."""
        with self._lock:
            begin = max(start, self._free_at.get(pair, start))
            end = begin + timedelta(seconds=seconds)
            self._free_at[pair] = end
            return end

    def joined(self, pair: tuple[str, str]) -> None:
        with self._lock:
            self._users[pair] = self._users.get(pair, 0) + 1

    def left(self, pair: tuple[str, str]) -> None:
        with self._lock:
            self._users[pair] -= 1
            if not self._users[pair]:
                del self._users[pair]

    def alone(self, pair: tuple[str, str]) -> bool:
        with self._lock:
            return self._users.get(pair, 0) <= 1


class Transit:
    """One attempt of one job across its link (see the module's docstring)."""

    def __init__(
        self,
        job_id: str,
        source_region_id: str,
        target_region_id: str,
        links: Links,
        pipes: LinkPipes,
        clock: Clock,
        waits: SimulatedWaits | None,
        stop: threading.Event,
    ) -> None:
        self._job_id = job_id
        self._pair = (source_region_id, target_region_id)
        self._links = links
        self._pipes = pipes
        self._clock = clock
        self._waits = waits  # None: wall mode
        self._stop = stop
        self._time = clock.now()  # the attempt's own time
        self._batch_start = self._time
        self.before_wait: Callable[[], None] = lambda: None
        self.after_wait: Callable[[], None] = lambda: None
        self.remaining_bytes: Callable[[], int] = lambda: 0

    def carry_on_from(self, before: Transit) -> None:
        """Another attempt of the same job: its time goes on from where the one before ended."""
        self._time = max(self._time, before._time)

    def __enter__(self) -> Transit:
        self._pipes.joined(self._pair)
        return self

    def __exit__(self, *exc: object) -> None:
        self._pipes.left(self._pair)

    def _link(self) -> Link:
        link = self._links.get(*self._pair)
        if link.cut:
            raise link_cut(
                self._pair[1],
                f"the {link.describe()} is cut (partitioned by the operator): every call of a "
                "job across it fails until it is restored",
            )
        return link

    def _start(self) -> datetime:
        """When the attempt's next step starts: in simulated mode its own time (which a
        transfer keeps continuous while the clock jumps); in wall mode now."""
        if self._waits is None:
            self._time = self._clock.now()
        return self._time

    def call(self) -> None:
        """A call of the job to the target region is about to cross the link."""
        link = self._link()
        if link.latency_ms:
            self._time = self._start() + timedelta(milliseconds=link.latency_ms)
            self._wait(self._time, self._time)

    def batch_hashes(self, average_chunk_bytes: int) -> int:
        """How many chunks a relayed batch holds on this link now."""
        link = self._link()
        if not link.bandwidth_bytes_per_second or average_chunk_bytes <= 0:
            return RELAY_BATCH
        fit = int(link.bandwidth_bytes_per_second * BATCH_SECONDS) // average_chunk_bytes
        return max(1, min(RELAY_BATCH, fit))

    def crossing(self) -> None:
        """A batch of chunks is about to cross (a call to the target region): it starts now
        (wall mode; so that the time it takes to send counts within its time on the link) or at
        the attempt's own time (simulated mode)."""
        self.call()
        self._batch_start = self._start()

    def crossed(self, wire_bytes: int) -> None:
        """A batch of `wire_bytes` was relayed: the attempt waits until it has crossed."""
        link = self._links.get(*self._pair)
        rate = link.bandwidth_bytes_per_second
        if not rate:
            return
        end = self._pipes.reserve(self._pair, self._batch_start, wire_bytes / rate)
        self._time = end
        horizon = end
        if self._pipes.alone(self._pair):
            horizon = end + timedelta(seconds=self.remaining_bytes() / rate)
        self._wait(end, horizon)

    def wait_for_retry(self, seconds: float) -> None:
        """Simulated mode: waits `seconds` of the cluster clock before another attempt."""
        self._time = max(self._time, self._clock.now()) + timedelta(seconds=seconds)
        self._wait(self._time, self._time)

    def _wait(self, until: datetime, horizon: datetime) -> None:
        self.before_wait()
        if self._waits is None:
            self._stop.wait(max((until - self._clock.now()).total_seconds(), 0.0))
        elif self._clock.now() < until:
            self._waits.wait_until(self._job_id, until, horizon, self._stop)
        self.after_wait()
        if self._stop.is_set():
            raise coordinator_stopping(self._pair[1])

    @property
    def time(self) -> datetime:
        """The attempt's own time: in simulated mode when its last step ended (at most the
        cluster clock's now, which may have jumped past it)."""
        return self._time if self._waits is not None else self._clock.now()
