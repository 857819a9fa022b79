"""Where a region can replicate to (R5, P3), as each region says it itself at the call, without
one hung region stalling the list (issue 12). What it keeps:

- Every other region is asked at once, each with a short deadline (`targets_timeout_seconds`,
  2 s by default); the list waits about that long at most, whatever the regions do.
- A region that has not answered by then, or could not serve, is listed as unreachable with
  why, and cannot be picked; unless the last answer it gave (since the coordinator started)
  said it is no target for this account (it refuses replication, R5, or holds none of the
  account's projects): a region known to be no target stays out while it says nothing new.
- At most one question per region and account is in flight: whoever asks while one is pending
  shares its answer, so a hung region holds at most one thread per account, however many ask.

Plain Python: nodes are reached only through csbs.clients."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from coordinator.models import ReplicationTarget
from csbs.clients import NodeError, RegionNodes
from csbs.errors import CsbsError, InvalidArgument, RegionNotFound

log = logging.getLogger(__name__)

ASKING_THREADS = 16  # questions to regions in flight at once, for every caller together
# The list waits this much longer than a question's deadline, so that a question that times
# out has ended (and is no longer shared) by the time the list answers.
WAIT_GRACE = 0.25

Key = tuple[str, str]  # (region, account)


class TargetFinder:
    def __init__(self, nodes: RegionNodes, timeout: float) -> None:
        self._nodes = nodes
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=ASKING_THREADS, thread_name_prefix="ask")
        self._lock = threading.Lock()
        self._pending: dict[Key, Future[ReplicationTarget | None]] = {}
        # The last answer of each region for each account: the target it was, or None for
        # no target. A region never heard from since the start is not in it.
        self._last: dict[Key, ReplicationTarget | None] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def list(self, account_id: str, source_region_id: str) -> list[ReplicationTarget]:
        """Every other region that accepts replication and holds a project of the account, in
        the cluster's order: those that answered with the account's projects there, the others
        as unreachable."""
        if not source_region_id:
            raise InvalidArgument("source_region_id is required")
        if source_region_id not in self._nodes:
            raise RegionNotFound(source_region_id)
        asked = {
            region_id: self._ask(region_id, account_id)
            for region_id in self._nodes.region_ids
            if region_id != source_region_id
        }
        wait(asked.values(), timeout=self._timeout + WAIT_GRACE)
        listed = (self._listed(r, account_id, answer) for r, answer in asked.items())
        return [t for t in listed if t is not None]

    def _ask(self, region_id: str, account_id: str) -> Future[ReplicationTarget | None]:
        key = (region_id, account_id)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = self._pool.submit(self._target, key)
            return pending

    def _target(self, key: Key) -> ReplicationTarget | None:
        """The region's target for the account as it says now; None if it is none."""
        region_id, account_id = key
        try:
            info = self._nodes.client(region_id, account_id).region_info(timeout=self._timeout)
            projects = tuple(p for p in info.projects if p.account_id == account_id)
            target = (
                ReplicationTarget(info.region_id or region_id, info.display_name, projects)
                if info.accepts_replication and projects
                else None
            )
            with self._lock:
                self._last[key] = target
            return target
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _listed(
        self, region_id: str, account_id: str, answer: Future[ReplicationTarget | None]
    ) -> ReplicationTarget | None:
        """What the list shows of a region: its answer, or unreachable, or nothing."""
        if not answer.done() or answer.cancelled():
            reason = f"did not answer within {self._timeout:g}s"
        else:
            exc = answer.exception()
            if exc is None:
                return answer.result()
            if not isinstance(exc, CsbsError):
                raise exc
            reason = _reason(exc, self._timeout)
        key = (region_id, account_id)
        with self._lock:
            heard, last = key in self._last, self._last.get(key)
        if heard and last is None:
            return None  # the last it said: no target; it has said nothing new since
        log.info("region %s listed as an unreachable replication target: %s", region_id, reason)
        name = "" if last is None else last.display_name
        return ReplicationTarget(region_id, name, (), unreachable_reason=reason)


def _reason(exc: CsbsError, timeout: float) -> str:
    if isinstance(exc, NodeError) and exc.timed_out:
        return f"did not answer within {timeout:g}s"
    return exc.message
