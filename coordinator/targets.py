"""Where a region can replicate to (R5, P3), and the catalog of every region with where its node
listens (ListRegions), as each region says it itself at the call, without one hung region
stalling the list (issue 12). What it keeps:

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
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from coordinator.models import RegionListing, ReplicationTarget
from csbs.clients import NodeError, RegionNodes
from csbs.errors import CsbsError, InvalidArgument, RegionNotFound
from csbs.node_views import ProjectSummary

log = logging.getLogger(__name__)

ASKING_THREADS = 16  # questions to regions in flight at once, for every caller together
# The list waits this much longer than a question's deadline, so that a question that times
# out has ended (and is no longer shared) by the time the list answers.
WAIT_GRACE = 0.25

Key = tuple[str, str]  # (region, account)


@dataclass(frozen=True)
class Heard:
    """What a region said of itself to an account: its name, whether it accepts replication
    (R5) and the account's projects there (P3)."""

    region_id: str
    display_name: str
    accepts_replication: bool
    projects: tuple[ProjectSummary, ...]

    @property
    def is_target(self) -> bool:
        return self.accepts_replication and bool(self.projects)


class TargetFinder:
    def __init__(self, nodes: RegionNodes, timeout: float) -> None:
        self._nodes = nodes
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=ASKING_THREADS, thread_name_prefix="ask")
        self._lock = threading.Lock()
        self._pending: dict[Key, Future[Heard]] = {}
        # The last answer of each region for each account. A region never heard from since the
        # start is not in it.
        self._last: dict[Key, Heard] = {}

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
        asked = self._ask_all(
            account_id, [r for r in self._nodes.region_ids if r != source_region_id]
        )
        listed = (self._target(r, account_id, answer) for r, answer in asked.items())
        return [t for t in listed if t is not None]

    def regions(self, account_id: str) -> Sequence[RegionListing]:
        """Every region of the cluster, in the cluster's order, as it says itself now, with the
        account's projects there and where its node listens; one that does not answer within
        the deadline is listed as unreachable, with what it said last."""
        asked = self._ask_all(account_id, self._nodes.region_ids)
        return [self._listing(r, account_id, answer) for r, answer in asked.items()]

    def _ask_all(self, account_id: str, region_ids: Iterable[str]) -> dict[str, Future[Heard]]:
        asked = {region_id: self._ask(region_id, account_id) for region_id in region_ids}
        wait(asked.values(), timeout=self._timeout + WAIT_GRACE)
        return asked

    def _ask(self, region_id: str, account_id: str) -> Future[Heard]:
        key = (region_id, account_id)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = self._pool.submit(self._hear, key)
            return pending

    def _hear(self, key: Key) -> Heard:
        """What the region says to the account now."""
        region_id, account_id = key
        try:
            info = self._nodes.client(region_id, account_id).region_info(timeout=self._timeout)
            heard = Heard(
                info.region_id or region_id,
                info.display_name,
                info.accepts_replication,
                tuple(p for p in info.projects if p.account_id == account_id),
            )
            with self._lock:
                self._last[key] = heard
            return heard
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _answer(self, answer: Future[Heard]) -> Heard | str:
        """The region's answer, or why there is none."""
        if not answer.done() or answer.cancelled():
            return f"did not answer within {self._timeout:g}s"
        exc = answer.exception()
        if exc is None:
            return answer.result()
        if not isinstance(exc, CsbsError):
            raise exc
        return _reason(exc, self._timeout)

    def _last_heard(self, region_id: str, account_id: str) -> Heard | None:
        with self._lock:
            return self._last.get((region_id, account_id))

    def _target(
        self, region_id: str, account_id: str, answer: Future[Heard]
    ) -> ReplicationTarget | None:
        """What the target list shows of a region: its answer, or unreachable, or nothing."""
        heard = self._answer(answer)
        if isinstance(heard, Heard):
            if not heard.is_target:
                return None
            return ReplicationTarget(heard.region_id, heard.display_name, heard.projects)
        last = self._last_heard(region_id, account_id)
        if last is not None and not last.is_target:
            return None  # the last it said: no target; it has said nothing new since
        log.info("region %s listed as an unreachable replication target: %s", region_id, heard)
        name = "" if last is None else last.display_name
        return ReplicationTarget(region_id, name, (), unreachable_reason=heard)

    def _listing(self, region_id: str, account_id: str, answer: Future[Heard]) -> RegionListing:
        address, tls = self._nodes.published_address(region_id)
        heard = self._answer(answer)
        if isinstance(heard, Heard):
            return RegionListing(
                heard.region_id,
                heard.display_name,
                heard.accepts_replication,
                heard.projects,
                address,
                tls,
            )
        last = self._last_heard(region_id, account_id)
        return RegionListing(
            region_id,
            "" if last is None else last.display_name,
            False if last is None else last.accepts_replication,
            (),
            address,
            tls,
            unreachable_reason=heard,
        )


def _reason(exc: CsbsError, timeout: float) -> str:
    if isinstance(exc, NodeError) and exc.timed_out:
        return f"did not answer within {timeout:g}s"
    return exc.message
