"""`csbs fault` and `csbs region outage` (issue 13), driven as a user drives them: the installed
executable against a real cluster, its human and `--json` output, exit codes and one-line
errors; and the CLI's own retries meeting a fault rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Cluster, write_cluster_config
from tests.test_cli import CSBS, cluster_env, csbs, csbs_json

REGION = "cn-east-3"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert CSBS.exists(), f"no {CSBS}: install the project (make install) so the script exists"
    with Cluster(write_cluster_config(tmp_path_factory.mktemp("cli_faults"))) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture
def env(cluster: Cluster) -> Iterator[dict[str, str]]:
    environment = cluster_env(cluster)
    yield environment
    csbs(environment, "fault", "clear")
    csbs(environment, "region", "outage", REGION, "--back")


def rules(env: dict[str, str], *process: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = csbs_json(env, "fault", "list", *process)
    return found


def test_fault_add_shows_the_rule_and_list_shows_every_process(env: dict[str, str]) -> None:
    added = csbs_json(
        env,
        "fault",
        "add",
        "--process",
        REGION,
        "--method",
        "csbs.v1.RegionNode.CreateImage",
        "--code",
        "unavailable",
        "--count",
        "2",
    )
    assert added["process"] == REGION and added["method"] == "/csbs.v1.RegionNode/CreateImage"
    assert (added["code"], added["count"], added["remaining"]) == ("UNAVAILABLE", 2, 2)
    on_coordinator = csbs_json(
        env,
        "fault",
        "add",
        "--process",
        "coordinator",
        "--method",
        "*/ReplicateBackup",
        "--code",
        "RESOURCE_EXHAUSTED",
        "--message",
        "rehearsal: quota",
        "--probability",
        "0.5",
        "--seed",
        "7",
    )
    assert on_coordinator["probability"] == 0.5 and on_coordinator["seed"] == "7"
    listed = rules(env)
    assert [(r["process"], r["rule_id"]) for r in listed] == [
        ("coordinator", on_coordinator["rule_id"]),
        (REGION, added["rule_id"]),
    ]
    assert rules(env, "--process", "coordinator") == [on_coordinator]
    human = csbs(env, "fault", "list").stdout
    assert human.splitlines()[0].split() == [
        "PROCESS",
        "ID",
        "METHOD",
        "CODE",
        "DELAY",
        "COUNT",
        "PROBABILITY",
        "MATCHED",
        "FAILED",
    ]
    assert added["rule_id"] in human and "2 (2 remaining)" in human and "0.5 (seed 7)" in human


def test_the_cli_retries_through_two_unavailable_list_calls_but_not_three(
    env: dict[str, str],
) -> None:
    args = ["fault", "add", "--process", REGION, "--method", "*/ListServers", "--code"]
    csbs(env, *args, "UNAVAILABLE", "--count", "2")
    # The command line retries a read on UNAVAILABLE (three attempts): it gets through.
    assert csbs(env, "--region", REGION, "server", "list").returncode == 0
    assert rules(env) == []
    rule = csbs_json(env, *args, "UNAVAILABLE", "--count", "3")
    done = csbs(env, "--region", REGION, "server", "list", code=3)
    assert done.stderr.startswith("error: injected fault") and rule["rule_id"] in done.stderr


def test_fault_clear_removes_one_rule_where_it_is_or_every_rule(env: dict[str, str]) -> None:
    first = csbs_json(env, "fault", "add", "--process", REGION, "--method", "*", "--delay-ms", "1")
    csbs_json(env, "fault", "add", "--process", "cn-north-4", "--method", "*", "--delay-ms", "1")
    cleared = csbs_json(env, "fault", "clear", first["rule_id"])
    assert cleared == {"cleared": 1, "by_process": {REGION: 1}}
    assert [r["process"] for r in rules(env)] == ["cn-north-4"]
    done = csbs(env, "fault", "clear", first["rule_id"], code=1)
    assert f"no process of the cluster holds fault rule {first['rule_id']!r}" in done.stderr
    assert csbs(env, "fault", "clear").stdout == "cleared 1 fault rule (cn-north-4 1)\n"


def test_fault_add_refusals_are_one_line_naming_the_field_or_option(env: dict[str, str]) -> None:
    args = ["fault", "add", "--method", "*"]
    done = csbs(env, *args, "--process", REGION, "--code", "NOPE", code=1)
    assert done.stderr.startswith("error: code: 'NOPE' is not a gRPC status code")
    done = csbs(env, *args, "--process", REGION, "--code", "INTERNAL", "--probability", "2", code=1)
    assert done.stderr.startswith("error: probability:")
    done = csbs(env, *args, "--process", "mars-1", "--code", "INTERNAL", code=2)
    assert done.stderr.startswith("error: --process: coordinator or a region of the cluster")
    without = {k: v for k, v in env.items() if k != "CSBS_OPERATOR_TOKEN"}
    done = csbs(without, *args, "--process", REGION, "--code", "INTERNAL", code=1)
    assert "FaultInjection.AddFaultRule needs the operator credential" in done.stderr
    assert rules(env) == []


def test_region_outage_out_show_and_back(env: dict[str, str]) -> None:
    shown = csbs(env, "region", "outage", REGION).stdout
    assert shown.split() == ["Region", REGION, "State", "in", "service"]
    out = csbs(env, "region", "outage", REGION, "--out", "--reason", "rehearsal: power cut")
    assert "out (UNAVAILABLE to users and the coordinator)" in out.stdout
    assert f"csbs region outage {REGION} --back" in out.stderr
    state = csbs_json(env, "region", "outage", REGION)
    assert (state["region_id"], state["out"], state["reason"]) == (
        REGION,
        True,
        "rehearsal: power cut",
    )
    done = csbs(env, "--region", REGION, "server", "list", code=3)
    assert done.stderr.startswith(f"error: region {REGION} is out: rehearsal: power cut")
    back = json.loads(csbs(env, "region", "outage", REGION, "--back", "--json").stdout)
    assert back["out"] is False and back["since"]
    csbs(env, "--region", REGION, "server", "list")
    assert csbs(env, "region", "outage", REGION, "--out", "--back", code=2).stderr.startswith(
        "error: give --out or --back"
    )
