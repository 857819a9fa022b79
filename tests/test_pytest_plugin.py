"""Issue 14, the pytest plugin's settings: a suite of a user's (run by this venv's pytest, which
has the plugin from the project's install) picks its own config, the fixture's scope and the
clock in its ini file and with a marker; the cluster runs that config as it is (its link
included) on ephemeral ports, and a test marked with another clock than its cluster fails saying
so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[cluster]
data_dir = "var"
clock = "wall"

[coordinator]
listen = "127.0.0.1:1"  # a fixed port: the fixture's cluster takes ephemeral ones

[[accounts]]
id = "ops"

[[regions]]
id = "eu-west-0"
listen = "127.0.0.1:2"
accepts_replication = true
projects = [{ id = "eu-west-0_ops", account = "ops", main = true }]

[[regions]]
id = "eu-north-1"
listen = "127.0.0.1:3"
accepts_replication = true
projects = [{ id = "eu-north-1_ops", account = "ops", main = true }]

[[links]]
source = "eu-west-0"
target = "eu-north-1"
latency_ms = 5
"""

INI = """
[pytest]
csbs_cluster_scope = module
csbs_config = clusters/two_regions.toml
"""

SIMULATED_MODULE = """
from datetime import timedelta

import pytest

pytestmark = pytest.mark.csbs_clock("simulated")


def test_the_cluster_of_the_module(csbs_cluster):
    assert csbs_cluster.clock == "simulated"
    assert list(csbs_cluster.region_addresses) == ["eu-west-0", "eu-north-1"]
    assert csbs_cluster.coordinator_address != "127.0.0.1:1"
    assert list(csbs_cluster.tokens) == ["ops"]
    client = csbs_cluster.client("ops")
    links = [
        (link.source_region_id, link.target_region_id, link.latency_ms)
        for link in client.coordinator.list_links()
    ]
    assert links == [("eu-west-0", "eu-north-1", 5)]
    before = client.coordinator.get_clock().now.ToDatetime()
    after = client.advance_clock(timedelta(hours=1)).now.ToDatetime()
    assert after - before == timedelta(hours=1)
"""

WALL_MODULE = """
import pytest


@pytest.mark.csbs_clock("simulated")
def test_marked_alone_in_a_module_on_the_wall_clock(csbs_cluster):
    pass
"""


def test_ini_scope_config_and_marker_choose_the_cluster_and_a_wrong_clock_fails(
    tmp_path: Path,
) -> None:
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "two_regions.toml").write_text(CONFIG)
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_simulated.py").write_text(SIMULATED_MODULE)
    (tmp_path / "test_wall.py").write_text(WALL_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSBS_", "PYTEST_"))}

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed, 1 error" in done.stdout, done.stdout
    assert (
        "this test is marked csbs_clock('simulated') but its csbs_cluster (scope module) runs "
        "the wall clock"
    ) in done.stdout, done.stdout


OWNER = """
import sys, time
from pathlib import Path
from csbs.testing import start_cluster

with start_cluster(Path(sys.argv[1])) as cluster:
    print(cluster.coordinator_address, flush=True)
    time.sleep(600)
"""


def test_a_cluster_whose_owner_is_killed_stops_itself(tmp_path: Path) -> None:
    """The owner of a fresh cluster (a test run, the demo) killed with SIGKILL runs no clean-up:
    the cluster sees its stdin pipe close and stops every process of its own."""
    (tmp_path / "cluster.toml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "owner.py").write_text(OWNER, encoding="utf-8")
    owner = subprocess.Popen(
        [sys.executable, str(tmp_path / "owner.py"), str(tmp_path / "cluster.toml")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip(), "the cluster did not start"
        processes = psutil.Process(owner.pid).children(recursive=True)
        # csbs-cluster, two nodes and the coordinator.
        assert len(processes) >= 4, processes
    finally:
        owner.kill()
        owner.wait()
    _, alive = psutil.wait_procs(processes, timeout=40)
    assert not alive, alive
