"""What a policy's retention deletes (coordinator/retention.py), without processes: by count
and by days, each counted per server, and replicas grouped by the server they protect."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from coordinator.retention import expired, server_of_replica

NOW = datetime(2024, 3, 1, 12, tzinfo=UTC)

pytestmark = pytest.mark.timeout(30)


@dataclass(frozen=True)
class Item:
    name: str
    server: str
    created_at: datetime | None


def _daily(server: str, days: int) -> list[Item]:
    return [Item(f"{server}{d}", server, NOW - timedelta(days=d)) for d in range(days)]


def _names(items: list[Item]) -> set[str]:
    return {i.name for i in items}


def test_keep_count_keeps_the_newest_n_of_each_server() -> None:
    items = _daily("a", 5) + _daily("b", 2) + _daily("c", 4)
    victims = expired(items, lambda i: i.server, NOW, keep_count=3)
    assert _names(victims) == {"a3", "a4", "c3"}


def test_keep_days_deletes_what_is_older_than_d_days_of_each_server() -> None:
    items = _daily("a", 5) + _daily("b", 1)
    victims = expired(items, lambda i: i.server, NOW, keep_days=2)
    assert _names(victims) == {"a3", "a4"}  # exactly two days old is kept


def test_no_rule_keeps_everything_and_an_undated_item_counts_as_new() -> None:
    items = [*_daily("a", 3), Item("undated", "a", None)]
    assert expired(items, lambda i: i.server, NOW) == []
    assert _names(expired(items, lambda i: i.server, NOW, keep_count=2)) == {"a1", "a2"}


def test_a_replica_counts_for_the_server_its_job_or_source_backup_names() -> None:
    by_job = {"job1": "srv1", "job2": ""}
    by_backup = {"b2": "srv2"}
    assert server_of_replica("b1", "job1", by_job, by_backup) == "srv1"
    assert server_of_replica("b2", "job2", by_job, by_backup) == "srv2"
    unknown = [server_of_replica(b, "", by_job, by_backup) for b in ("b3", "b4")]
    assert unknown[0] != unknown[1]  # each its own group: never deleted by count
