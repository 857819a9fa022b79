"""What a policy's retention deletes, as pure functions over what the nodes list: no I/O, so
that the rules are unit-tested without processes.

Both rules count per protected server, as the README says: "keep the newest N" keeps N backups
of each server in the policy's region, and N replicas of each server in the target region."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Protocol, TypeVar


class Dated(Protocol):
    @property
    def created_at(self) -> datetime | None: ...


B = TypeVar("B", bound=Dated)


def _newest_first(items: Iterable[B], now: datetime) -> list[B]:
    return sorted(items, key=lambda b: b.created_at or now, reverse=True)


def _per_group(items: Iterable[B], group_of: Callable[[B], str]) -> dict[str, list[B]]:
    groups: dict[str, list[B]] = {}
    for item in items:
        groups.setdefault(group_of(item), []).append(item)
    return groups


def expired(
    items: Iterable[B],
    group_of: Callable[[B], str],
    now: datetime,
    keep_count: int = 0,
    keep_days: int = 0,
) -> list[B]:
    """What the rule no longer keeps, counted per group (a server): beyond the newest
    `keep_count` of each group, or older than `keep_days` days; nothing if both are 0 (keep
    forever). A backup without a creation time counts as made now."""
    if not keep_count and not keep_days:
        return []
    victims: list[B] = []
    for group in _per_group(items, group_of).values():
        newest_first = _newest_first(group, now)
        if keep_count:
            victims += newest_first[keep_count:]
        else:
            limit = now - timedelta(days=keep_days)
            victims += [b for b in newest_first if (b.created_at or now) < limit]
    return victims


def server_of_replica(
    source_backup_id: str,
    job_id: str,
    server_of_job: Mapping[str, str],
    server_of_backup: Mapping[str, str],
) -> str:
    """The server a replica protects: as its job recorded it, else as its source backup says
    (if still there). A replica whose server is known nowhere is a group of its own, so that
    replica retention never deletes what it cannot count."""
    return (
        server_of_job.get(job_id)
        or server_of_backup.get(source_backup_id)
        or f"unknown server of backup {source_backup_id}"
    )
