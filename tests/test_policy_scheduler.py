"""What falls due next (coordinator/policy_scheduler.py), without processes: the earliest
time first, backups before replications at the same instant, nothing past `until`, and a
disabled policy or replication rule never due."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from coordinator.policy_models import (
    KIND_BACKUP,
    KIND_REPLICATION,
    Policy,
    PolicyReplication,
    Retention,
)
from coordinator.policy_scheduler import earliest_due, following_time, schedule_times
from coordinator.schedule import Schedule

NOW = datetime(2024, 3, 1, 12, tzinfo=UTC)
AT = NOW.timestamp()

pytestmark = pytest.mark.timeout(30)


def _policy() -> Policy:
    return Policy(
        policy_id="pol",
        region_id="north",
        project_id="proj",
        name="daily",
        description="",
        server_ids=(),
        backup_schedule=Schedule("FREQ=DAILY;BYHOUR=2;BYMINUTE=0", "UTC"),
        retention=Retention(),
        enabled=True,
        replication=PolicyReplication(
            True, "south", "proj-south", Schedule("FREQ=DAILY;BYHOUR=4;BYMINUTE=30", "UTC")
        ),
        created_at=NOW,
        updated_at=NOW,
    )


def test_the_earliest_due_run_first_backups_before_replications_at_the_same_instant() -> None:
    times = [("a", AT + 60, AT), ("b", AT, None), ("c", None, AT + 30)]
    assert earliest_due(times, None) == (NOW, "b", KIND_BACKUP)
    assert earliest_due([("a", AT + 60, AT)], None) == (NOW, "a", KIND_REPLICATION)
    assert earliest_due([("a", AT, AT)], None) == (NOW, "a", KIND_BACKUP)


def test_nothing_is_due_past_until_or_when_no_policy_has_a_next_time() -> None:
    assert earliest_due([("a", AT, None)], NOW - timedelta(seconds=1)) is None
    assert earliest_due([("a", AT, None)], NOW) == (NOW, "a", KIND_BACKUP)
    assert earliest_due([("a", None, None)], None) is None
    assert earliest_due([], None) is None


def test_next_times_follow_the_schedules_and_a_disabled_rule_is_never_due() -> None:
    policy = _policy()
    backup_at = datetime(2024, 3, 2, 2, tzinfo=UTC).timestamp()
    replication_at = datetime(2024, 3, 2, 4, 30, tzinfo=UTC).timestamp()
    assert schedule_times(policy, NOW) == (backup_at, replication_at)
    assert schedule_times(replace(policy, enabled=False), NOW) == (None, None)
    assert policy.replication is not None
    no_repl = replace(policy, replication=replace(policy.replication, enabled=False))
    assert schedule_times(no_repl, NOW) == (backup_at, None)
    due = datetime(2024, 3, 2, 2, tzinfo=UTC)
    assert following_time(policy, KIND_BACKUP, due) == due.timestamp() + 86400
    assert following_time(replace(policy, replication=None), KIND_REPLICATION, due) is None
