"""Issue 13 from the command line: `csbs quota` (the caller's quotas, a table or --json),
`csbs quota set` and `csbs region capacity` (operator calls), run as the installed executable
against a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csbs.v1 import quotas_pb2 as qpb
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub
from tests.harness import (
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
    DEFAULT_REGIONS,
    OPERATOR_TOKEN,
    Cluster,
    write_cluster_config,
)

pytestmark = pytest.mark.timeout(180)

CSBS = Path(sys.executable).parent / "csbs"
SOURCE = "cn-north-4"
TARGET = "cn-east-3"
MAIN = f"{SOURCE}_default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    regions = [dict(r) for r in DEFAULT_REGIONS if r["id"] in (SOURCE, TARGET)]
    regions[0]["quotas"] = [{"project": MAIN, "backups": 7}]
    regions[1]["capacity_bytes"] = 64 << 20
    with Cluster(write_cluster_config(tmp_path_factory.mktemp("cli-quotas"), regions)) as running:
        running.start()
        yield running


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> dict[str, str]:
    plain = {k: v for k, v in os.environ.items() if not k.startswith("CSBS_")}
    return {
        **plain,
        "CSBS_CONFIG": str(cluster.config.path),
        "CSBS_TOKEN": ACCOUNT_TOKENS[DEFAULT_ACCOUNT],
        "CSBS_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }


def csbs(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(CSBS), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    return done


def csbs_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(csbs(env, *args, "--json").stdout)


def test_csbs_quota_shows_the_callers_quotas_as_a_table_and_as_json(env: dict[str, str]) -> None:
    table = csbs(env, "quota").stdout.splitlines()
    assert table[0] == f"project {MAIN} in region {SOURCE}"
    assert table[1].split() == ["TYPE", "USED", "QUOTA", "UNIT"]
    assert table[2].split() == ["backups", "0", "7", "-"]
    assert table[3].split() == ["backup_capacity", "0", "unlimited", "GB"]
    answer = csbs_json(env, "quota", "--region", TARGET, "--project", f"{TARGET}_dr")
    assert answer == {
        "project_id": f"{TARGET}_dr",
        "resources": [
            {"type": "backups", "quota": "-1", "used": "0", "unit": ""},
            {"type": "backup_capacity", "quota": "-1", "used": "0", "unit": "GB"},
        ],
    }
    refused = csbs(env, "quota", "--project", f"{SOURCE}_acme", code=1)
    assert "not a project of your account" in refused.stderr


def test_csbs_quota_set_is_an_operator_call_that_changes_the_quota(
    env: dict[str, str], cluster: Cluster
) -> None:
    project = f"{TARGET}_dr"
    args = ("quota", "set", "--region", TARGET, "--project", project)
    answer = csbs_json(env, *args, "--type", "backup_capacity", "--quota", "40")
    assert answer["resources"][1] == {
        "type": "backup_capacity",
        "quota": "40",
        "used": "0",
        "unit": "GB",
    }
    got = RegionNodeAdminStub(cluster.channel(TARGET)).SetProjectQuota(
        qpb.SetProjectQuotaRequest(project_id=project, type="backups", quota=3), timeout=30
    )
    assert [r.quota for r in got.resources] == [3, 40]

    as_user = {**env, "CSBS_OPERATOR_TOKEN": ACCOUNT_TOKENS[DEFAULT_ACCOUNT]}
    refused = csbs(as_user, *args, "--type", "backups", "--quota", "1", code=1)
    assert "needs the operator credential" in refused.stderr, refused.stderr
    bad = csbs(env, *args, "--type", "backups", "--quota", "-2", code=1)
    assert bad.stderr.startswith("error: quota:"), bad.stderr
    assert csbs(env, "quota", "set", "--type", "backups", "--quota", "1", code=2).stderr


def test_csbs_region_capacity_shows_and_sets_a_regions_capacity(env: dict[str, str]) -> None:
    shown = csbs(env, "region", "capacity", TARGET).stdout
    assert "Capacity  64 MiB (67108864 bytes)" in shown, shown
    assert "Set by    the cluster config" in shown, shown
    answer = csbs_json(env, "region", "capacity", TARGET, "--set", "1GiB")
    assert answer["capacity_bytes"] == str(1 << 30) and answer["set_by_operator"] is True
    assert csbs_json(env, "--region", TARGET, "region", "capacity")["capacity_bytes"] == str(
        1 << 30
    )
    unlimited = csbs(env, "region", "capacity", "--set", "0").stdout
    assert "Capacity  unlimited" in unlimited, unlimited
    assert "Region    cn-north-4" in unlimited, unlimited
