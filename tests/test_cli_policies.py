"""`csbs policy` and `csbs clock`, driven as a user drives them: the installed executable run as a
subprocess against a real cluster whose clock is simulated (a daily policy with replication run
for five simulated days, execute-now with --wait, updates naming only what was given, refusals
in one line) and against one on the wall clock (which cannot be advanced)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import MIB, seeded_bytes
from tests.test_cli import CSBS, RUN_TIMEOUT, _one_error_line, cluster_env, csbs, csbs_json

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
DAILY_2AM = "FREQ=DAILY;BYHOUR=2;BYMINUTE=0"
DAILY_3AM = "FREQ=DAILY;BYHOUR=3;BYMINUTE=0"

pytestmark = pytest.mark.timeout(300)


def instant(text: str) -> datetime:
    """A Timestamp as the JSON mapping writes it (RFC 3339, up to 9 fraction digits)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return datetime.fromisoformat(text)


def shown(text: str) -> str:
    """A Timestamp's JSON as the tables write it: UTC to the second."""
    return instant(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert CSBS.exists(), f"no {CSBS}: install the project (make install) so the script exists"
    path = write_cluster_config(tmp_path_factory.mktemp("cli-policies"), simulated_clock=True)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> dict[str, str]:
    return cluster_env(cluster)


def _server(env: dict[str, str], data_mib: int = 0, seed: int = 0) -> str:
    """A new 8 MiB server, with `data_mib` MiB of data of its own written from stdin."""
    sid: str = csbs_json(env, "server", "create", "--disk", "8MiB")["server_id"]
    if data_mib:
        done = subprocess.run(
            [str(CSBS), "server", "write", sid, "--disk", "0", "--file", "-"],
            env=env,
            input=seeded_bytes(seed, data_mib * MIB),
            capture_output=True,
            timeout=RUN_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
    return sid


@pytest.fixture(scope="module")
def server_id(env: dict[str, str]) -> str:
    return _server(env, data_mib=4, seed=41)


@pytest.fixture(scope="module")
def policy(env: dict[str, str], server_id: str) -> dict[str, Any]:
    created: dict[str, Any] = csbs_json(
        env,
        *("policy", "create", "daily-cli", "--server", server_id),
        *("--schedule", DAILY_2AM, "--keep-count", "3"),
        *("--replicate-to", TARGET, "--replication-schedule", DAILY_3AM),
        *("--replica-keep-count", "2", "--description", "made by the CLI test"),
    )
    return created


@pytest.fixture(scope="module")
def five_days(env: dict[str, str], policy: dict[str, Any]) -> tuple[datetime, datetime]:
    """The cluster's time before and after `clock advance --by 5d`."""
    before = instant(csbs_json(env, "clock", "show")["now"])
    after = csbs_json(env, "clock", "advance", "--by", "5d")
    assert after["simulated"] is True
    return before, instant(after["now"])


def _runs(env: dict[str, str], policy_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = csbs_json(env, "policy", "runs", policy_id)
    return runs


# --- create, list, five simulated days ---------------------------------------------------------


def test_policy_create_answers_with_the_policy(
    env: dict[str, str], server_id: str, policy: dict[str, Any]
) -> None:
    assert policy["name"] == "daily-cli"
    assert policy["description"] == "made by the CLI test"
    assert (policy["region_id"], policy["project_id"]) == (SOURCE, "cn-north-4_default")
    assert policy["server_ids"] == [server_id]
    assert policy["backup_schedule"] == {"rrule": DAILY_2AM, "timezone": "UTC"}
    assert policy["retention"] == {"keep_count": 3}
    assert policy["enabled"] is True
    assert policy["replication"] == {
        "enabled": True,
        "target_region_id": TARGET,
        "target_project_id": "cn-east-3_default",
        "schedule": {"rrule": DAILY_3AM, "timezone": "UTC"},
        "replica_keep_count": 2,
    }
    assert instant(policy["next_backup_at"]).hour == 2
    assert instant(policy["next_replication_at"]).hour == 3
    listed = csbs_json(env, "policy", "list")
    assert policy["policy_id"] in [p["policy_id"] for p in listed]
    table = csbs(env, "policy", "list").stdout
    assert re.search(rf"^{policy['policy_id']}\s+daily-cli\s+yes\s+1\s+", table, re.MULTILINE)


def test_five_simulated_days_make_five_backup_and_five_replication_runs(
    env: dict[str, str],
    server_id: str,
    policy: dict[str, Any],
    five_days: tuple[datetime, datetime],
) -> None:
    before, after = five_days
    assert after - before == timedelta(days=5)
    runs = _runs(env, policy["policy_id"])
    kinds = [r["kind"] for r in runs]
    assert kinds.count("POLICY_RUN_KIND_BACKUP") == 5
    assert kinds.count("POLICY_RUN_KIND_REPLICATION") == 5
    assert {r["status"] for r in runs} == {"POLICY_RUN_STATUS_FINISHED"}
    assert {r["trigger"] for r in runs} == {"POLICY_RUN_TRIGGER_SCHEDULE"}
    actions = [i["action"] for r in runs for i in r["items"]]
    assert actions.count("backed_up") == 5
    assert actions.count("deleted") >= 2  # keep 3 backups (and replica retention: keep 2)
    assert actions.count("replicated") >= 4  # the fifth, if the 02:00 and 03:00 straddle "now"
    backups = csbs_json(env, "backup", "list", "--server", server_id)
    assert len(backups) == 3
    assert {b["policy_id"] for b in backups} == {policy["policy_id"]}
    # The human table: a run's columns on its first line, each item on a line of its own.
    table = csbs(env, "policy", "runs", policy["policy_id"]).stdout.splitlines()
    assert table[0].split() == [
        *("RUN", "WHEN", "KIND", "TRIGGER", "STATUS"),
        *("ACTION", "SERVER", "BACKUP", "JOB", "REASON"),
    ]
    assert len([line for line in table if " backed up " in line]) == 5
    assert not any(line != line.rstrip() for line in table)


def test_policy_show_names_the_next_times_and_lists_the_runs(
    env: dict[str, str], policy: dict[str, Any], five_days: tuple[datetime, datetime]
) -> None:
    now = csbs_json(env, "policy", "show", policy["policy_id"])
    assert instant(now["next_backup_at"]) > five_days[1]
    out = csbs(env, "policy", "show", policy["policy_id"]).stdout
    assert re.search(rf"^Next backup\s+{shown(now['next_backup_at'])}$", out, re.MULTILINE), out
    assert re.search(
        rf"^Next replication\s+{shown(now['next_replication_at'])}$", out, re.MULTILINE
    ), out
    assert re.search(r"^Retention\s+keep the newest 3 backups of each server$", out, re.MULTILINE)
    assert re.search(rf"^Replicate to\s+{TARGET} / cn-east-3_default$", out, re.MULTILINE)
    assert "Runs:" in out
    assert len(re.findall(r"\bbackup\s+schedule\s+finished\s+1 backed up", out)) == 5
    assert len(re.findall(r"\breplication\s+schedule\s+finished\b", out)) == 5


# --- execute-now -------------------------------------------------------------------------------


def test_policy_run_wait_follows_the_backups_and_then_the_run(
    env: dict[str, str], policy: dict[str, Any], five_days: tuple[datetime, datetime]
) -> None:
    done = csbs(env, "policy", "run", policy["policy_id"], "--wait", "--json")
    run = json.loads(done.stdout)
    assert run["kind"] == "POLICY_RUN_KIND_BACKUP"
    assert run["trigger"] == "POLICY_RUN_TRIGGER_EXECUTE_NOW"
    assert run["status"] == "POLICY_RUN_STATUS_FINISHED"
    assert [i["action"] for i in run["items"]] == ["backed_up", "deleted"]  # keep 3
    lines = done.stderr.strip().splitlines()
    # (A backup that ended before the watch began reports no figures.)
    assert re.fullmatch(r"backup [0-9a-f]{8}: available, (4 MiB )?in \d+\.\ds", lines[0]), lines
    assert re.fullmatch(r"policy run [0-9a-f]{8}: finished, in \d+\.\ds", lines[-1]), lines

    # The replication part (M3): the new backup is replicated; the job is followed, then shown.
    done = csbs(env, "policy", "run", policy["policy_id"], "--replication", "--wait")
    assert re.search(r"^replication [0-9a-f]{8}: success, ", done.stderr, re.MULTILINE)
    assert re.search(r"^Status\s+finished$", done.stdout, re.MULTILINE), done.stdout
    item = run["items"][0]
    assert re.search(
        rf"^replicated\s+{item['server_id']}\s+{item['backup_id']}\s+", done.stdout, re.M
    ), done.stdout
    assert re.search(r"^JOB\s+BACKUP\s+TO\s+STATUS\s+PROGRESS$", done.stdout, re.MULTILINE)
    assert re.search(rf"\s{TARGET} / cn-east-3_default\s+success\s+", done.stdout)

    # Nothing left to replicate: no jobs, every backup skipped naming R4b.
    idle = csbs_json(env, "policy", "run", policy["policy_id"], "--replication")
    assert idle["job_ids"] == []
    assert idle["kind"] == "POLICY_RUN_KIND_REPLICATION"
    assert idle["items"], idle
    assert {i["action"] for i in idle["items"]} == {"skipped"}
    assert all(i["reason"].startswith("R4b: ") for i in idle["items"])


def test_a_disabled_policy_adds_no_run(
    env: dict[str, str], policy: dict[str, Any], five_days: tuple[datetime, datetime]
) -> None:
    pid = policy["policy_id"]
    updated = csbs_json(env, "policy", "update", pid, "--disable")
    assert updated["enabled"] is False
    assert "next_backup_at" not in updated
    assert "next_replication_at" not in updated
    assert updated["retention"] == {"keep_count": 3}  # untouched
    assert updated["replication"] == policy["replication"]
    out = csbs(env, "policy", "show", pid).stdout
    assert re.search(r"^Next backup\s+none: the policy is disabled$", out, re.MULTILINE)
    count = len(_runs(env, pid))
    csbs_json(env, "clock", "advance", "--by", "1d")
    assert len(_runs(env, pid)) == count


# --- update, servers, delete -------------------------------------------------------------------


def test_policy_update_changes_exactly_what_was_given(env: dict[str, str]) -> None:
    pid = csbs_json(
        env,
        *("policy", "create", "editable", "--schedule", DAILY_2AM, "--timezone", "Asia/Shanghai"),
        *("--keep-days", "7", "--disabled"),
    )["policy_id"]
    renamed = csbs_json(env, "policy", "update", pid, "--name", "renamed")
    assert (renamed["name"], renamed["enabled"]) == ("renamed", False)
    assert renamed["retention"] == {"keep_days": 7}
    # A new rule keeps the time zone it was not given.
    moved = csbs_json(env, "policy", "update", pid, "--schedule", DAILY_3AM, "--enable")
    assert moved["backup_schedule"] == {"rrule": DAILY_3AM, "timezone": "Asia/Shanghai"}
    assert moved["enabled"] is True
    local = instant(moved["next_backup_at"]).astimezone(ZoneInfo("Asia/Shanghai"))
    assert (local.hour, local.minute) == (3, 0)
    assert "replication" not in moved
    forever = csbs_json(env, "policy", "update", pid, "--keep-forever")
    assert forever["retention"] == {}
    assert forever["name"] == "renamed"
    added = csbs_json(
        env,
        *("policy", "update", pid, "--replicate-to", TARGET, "--replicate-to-project"),
        *("cn-east-3_dr", "--replication-schedule", DAILY_2AM, "--replication-timezone", "UTC"),
    )
    assert added["replication"]["target_project_id"] == "cn-east-3_dr"
    assert added["backup_schedule"]["rrule"] == DAILY_3AM  # untouched
    kept = csbs_json(env, "policy", "update", pid, "--replica-keep-count", "4")
    assert kept["replication"] == {**added["replication"], "replica_keep_count": 4}
    gone = csbs_json(env, "policy", "update", pid, "--no-replication")
    assert "replication" not in gone

    line = _one_error_line(csbs(env, "policy", "update", pid, code=2))
    assert line.startswith("error: nothing to change")
    done = csbs(env, "policy", "update", pid, "--keep-count", "1", "--keep-days", "1", code=2)
    assert _one_error_line(done) == (
        "error: --keep-count and --keep-days cannot go together: a policy keeps by one rule"
    )
    done = csbs(env, "policy", "update", pid, "--replica-keep-count", "1", code=2)
    assert _one_error_line(done).startswith(f"error: policy {pid} has no replication rule")

    first, second = _server(env), _server(env)
    with_two = csbs_json(env, "policy", "add-servers", pid, first, second)
    assert with_two["server_ids"] == [first, second]
    with_one = csbs_json(env, "policy", "remove-servers", pid, first)
    assert with_one["server_ids"] == [second]
    out = csbs(env, "policy", "delete", pid).stdout
    assert out.strip() == f"deleted policy {pid}; the backups it made are kept"
    line = _one_error_line(csbs(env, "policy", "show", pid, code=1))
    assert line == f"error: policy {pid!r} not found"


def test_schedules_the_service_refuses_exit_1_naming_the_field(
    env: dict[str, str], server_id: str
) -> None:
    hourly = "FREQ=HOURLY;BYHOUR=1;BYMINUTE=0"
    done = csbs(env, "policy", "create", "bad", "--schedule", hourly, code=1)
    line = _one_error_line(done)
    assert line.startswith("error: backup_schedule.rrule: FREQ must be DAILY or WEEKLY"), line
    assert done.stdout == ""
    done = csbs(
        env,
        *("policy", "create", "bad", "--schedule", DAILY_2AM, "--replicate-to", TARGET),
        *("--replication-schedule", "FREQ=DAILY;BYHOUR=1;BYMINUTE=0,30"),
        code=1,
    )
    line = _one_error_line(done)
    assert line.startswith("error: replication.schedule.rrule: runs at "), line
    assert "at least one hour" in line
    done = csbs(
        env, "policy", "create", "bad", "--schedule", DAILY_2AM, "--replica-keep-count", "2", code=2
    )
    assert _one_error_line(done) == "error: --replica-keep-count needs --replicate-to REGION"


# --- the clock ---------------------------------------------------------------------------------


def test_clock_show_and_advance_to_an_instant(
    env: dict[str, str], five_days: tuple[datetime, datetime]
) -> None:
    clock = csbs_json(env, "clock", "show")
    assert clock["simulated"] is True
    now = instant(clock["now"])
    assert now >= five_days[1] + timedelta(days=1)
    out = csbs(env, "clock", "show").stdout
    assert re.search(rf"^Now\s+{shown(clock['now'])}$", out, re.MULTILINE)
    assert re.search(r"^Clock\s+simulated", out, re.MULTILINE)
    later = now + timedelta(hours=1, minutes=30)
    moved = csbs_json(env, "clock", "advance", "--to", later.isoformat())
    assert instant(moved["now"]) == later
    moved = csbs_json(env, "clock", "advance", "--by", "1h30m")
    assert instant(moved["now"]) == later + timedelta(minutes=90)
    # Never backwards: the service's one line.
    line = _one_error_line(csbs(env, "clock", "advance", "--to", now.isoformat(), code=1))
    assert line.startswith("error: to: ") and line.endswith("it never goes backwards"), line


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ((), "give --by DURATION or --to INSTANT"),
        (("--by", "1d", "--to", "2030-01-01T00:00:00Z"), "give --by DURATION or --to INSTANT"),
        (("--by", "3 days"), "--by: expected a duration"),
        (("--by", "1h1d"), "--by: expected a duration"),
        (("--to", "tomorrow"), "--to: expected an ISO 8601 instant"),
    ],
)
def test_clock_advance_usage_errors_exit_2(
    env: dict[str, str], args: tuple[str, ...], mentions: str
) -> None:
    line = _one_error_line(csbs(env, "clock", "advance", *args, code=2))
    assert line.startswith(f"error: {mentions}"), line


def test_a_wall_clock_cluster_cannot_be_advanced(tmp_path: Path) -> None:
    one_region = [
        {
            "id": SOURCE,
            "name": "CN North-Beijing4",
            "accepts_replication": True,
            "projects": [
                {"id": f"{SOURCE}_default", "name": SOURCE, "account": "default", "main": True}
            ],
        }
    ]
    with Cluster(write_cluster_config(tmp_path, regions=one_region)) as wall:
        wall.start(coordinator=True)
        env = cluster_env(wall)
        clock = csbs_json(env, "clock", "show")
        assert clock["simulated"] is False
        assert abs(instant(clock["now"]) - datetime.now(UTC)) < timedelta(minutes=1)
        done = csbs(env, "clock", "advance", "--by", "1h", code=1)
        line = _one_error_line(done)
        assert line.startswith("error: the cluster clock follows the wall clock"), line
        assert done.stdout == ""
