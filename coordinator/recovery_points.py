"""The recovery point a configuration gives (issue 13): for every server with replication, per
target region, the newest replica available there and how old its backup is at the cluster's
now (the RPO if the source region were lost now), and over a time range the worst and the
time-weighted median of that age, from the job records.

What counts: a replica is available from the instant its job succeeded; the age at an instant
is that instant minus the time the newest backup available then was taken. A replica since
deleted in the target region no longer counts for the age now; over a range it counts from its
job's success to the end (the deletion's instant is not recorded). An instant before the first
replica of the range counts from the start of the range. A job recorded before the backup's
time was kept counts from the job's creation. A server "with replication" is one a replication
job copied a backup of, or one a policy with a replication rule protects (from when the policy
was made: a protected server never replicated shows its whole time since as its worst)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from coordinator.models import JobStatus, ReplicationJob
from coordinator.policy_models import Policy
from coordinator.policy_store import PolicyStore
from coordinator.store import Store
from csbs.clock import Clock
from csbs.errors import InvalidArgument

# (source region, source project, server, target region)
Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class RecoveryPoint:
    source_region_id: str
    source_project_id: str
    server_id: str
    target_region_id: str
    replica: ReplicationJob | None  # the job of the newest replica available now
    age: timedelta | None  # now - its backup's time; None without a replica
    range_from: datetime
    range_to: datetime
    worst: timedelta
    median: timedelta
    replications: int
    failed_replications: int

    @property
    def backup_time(self) -> datetime | None:
        return None if self.replica is None else backup_time(self.replica)


@dataclass(frozen=True)
class PointFilter:
    source_region_id: str = ""
    target_region_id: str = ""
    server_id: str = ""
    range_from: datetime | None = None
    range_to: datetime | None = None


class RecoveryPoints:
    """GetRecoveryPoints: an account's points, from its job records and policies."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._policies = PolicyStore(store)
        self._clock = clock

    def of(self, account_id: str, where: PointFilter) -> tuple[datetime, list[RecoveryPoint]]:
        now = self._clock.now()
        jobs = self._store.replication_history(
            account_id, where.source_region_id, where.target_region_id, where.server_id
        )
        policies = []
        after: int | None = 0
        while after is not None:
            page, after = self._policies.page(account_id, where.source_region_id, "", after, 500)
            policies += page
        points = recovery_points(jobs, policies, now, where.range_from, where.range_to)
        return now, [
            p
            for p in points
            if (not where.target_region_id or p.target_region_id == where.target_region_id)
            and (not where.server_id or p.server_id == where.server_id)
        ]


def backup_time(job: ReplicationJob) -> datetime:
    return job.source_backup_at or job.created_at


def recovery_points(
    jobs: Iterable[ReplicationJob],
    policies: Iterable[Policy],
    now: datetime,
    range_from: datetime | None,
    range_to: datetime | None,
) -> list[RecoveryPoint]:
    """The points of the servers the jobs and policies name, in key order."""
    groups: dict[Key, list[ReplicationJob]] = {}
    protected_since: dict[Key, datetime] = {}
    for job in jobs:
        if job.source_server_id:
            key = (
                job.source_region_id,
                job.source_project_id,
                job.source_server_id,
                job.target_region_id,
            )
            groups.setdefault(key, []).append(job)
    for policy in policies:
        if policy.replication is not None and policy.replication.enabled:
            for server_id in policy.server_ids:
                key = (
                    policy.region_id,
                    policy.project_id,
                    server_id,
                    policy.replication.target_region_id,
                )
                groups.setdefault(key, [])
                since = protected_since.get(key, policy.created_at)
                protected_since[key] = min(since, policy.created_at)
    if range_from is not None and range_to is not None and range_to < range_from:
        raise InvalidArgument(
            f"to: {range_to.isoformat()} is before from ({range_from.isoformat()})"
        )
    return [
        _point(key, groups[key], protected_since.get(key), now, range_from, range_to)
        for key in sorted(groups)
    ]


def _point(
    key: Key,
    jobs: Sequence[ReplicationJob],
    protected_since: datetime | None,
    now: datetime,
    range_from: datetime | None,
    range_to: datetime | None,
) -> RecoveryPoint:
    successes = sorted(
        (j for j in jobs if j.status == JobStatus.SUCCESS and j.finished_at is not None),
        key=lambda j: (j.finished_at, backup_time(j)),
    )
    available = [j for j in successes if not j.replica_deleted]
    newest = max(available, key=backup_time, default=None)
    # A server a policy protects counts from when it was protected, replicated or not.
    first = [j.created_at for j in jobs] + ([protected_since] if protected_since else [])
    start = range_from or min(first, default=now)
    end = range_to or now
    start = min(start, end)
    worst, median = _age_over(successes, start, end)

    def within(job: ReplicationJob) -> bool:
        return job.finished_at is not None and start <= job.finished_at <= end

    return RecoveryPoint(
        *key,
        replica=newest,
        age=None if newest is None else max(now - backup_time(newest), timedelta(0)),
        range_from=start,
        range_to=end,
        worst=worst,
        median=median,
        replications=sum(1 for j in successes if within(j)),
        failed_replications=sum(1 for j in jobs if j.status == JobStatus.FAILED and within(j)),
    )


def _age_over(
    successes: Sequence[ReplicationJob], start: datetime, end: datetime
) -> tuple[timedelta, timedelta]:
    """The worst and the time-weighted median of the age over [start, end]: the age grows one
    second a second and drops when a replica of a newer backup becomes available."""
    # Segments [a, b) over which the newest backup available was taken at `basis` (before
    # the first replica: the start of the range).
    segments: list[tuple[float, float, float]] = []
    cursor = start.timestamp()
    stop = end.timestamp()
    base, have = cursor, False
    for job in successes:
        assert job.finished_at is not None
        at = job.finished_at.timestamp()
        if at > stop:
            break
        if at > cursor:
            segments.append((cursor, at, base))
            cursor = at
        taken = backup_time(job).timestamp()
        base, have = (max(base, taken) if have else taken), True
    if stop > cursor:
        segments.append((cursor, stop, base))
    if not segments:
        age = max(stop - base, 0.0)
        return timedelta(seconds=age), timedelta(seconds=age)
    worst = max(max(b - basis, 0.0) for _, b, basis in segments)
    total = sum(b - a for a, b, _ in segments)

    def below(x: float) -> float:  # how long the age is at most x
        return sum(min(max(x - (a - basis), 0.0), b - a) for a, b, basis in segments)

    low, high = 0.0, worst
    for _ in range(60):
        middle = (low + high) / 2
        if below(middle) >= total / 2:
            high = middle
        else:
            low = middle
    return timedelta(seconds=worst), timedelta(seconds=high)
