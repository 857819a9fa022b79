"""`csbs link` and `csbs rpo` (issue 13), driven as a user drives them: the installed executable
against a real cluster, its human and `--json` output, exit codes and one-line errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from csbs.cli.errors import EXIT_REFUSED, EXIT_USAGE
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import MIB, backup, make_server, node, seeded_bytes, write
from tests.replication_helpers import replicated
from tests.test_cli import CSBS, cluster_env, csbs, csbs_json

SOURCE, TARGET = "cn-north-4", "cn-east-3"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert CSBS.exists(), f"no {CSBS}: install the project (make install) so the script exists"
    path = write_cluster_config(tmp_path_factory.mktemp("cli_links"), chunk_size=64 * 1024)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture
def env(cluster: Cluster) -> Iterator[dict[str, str]]:
    environment = cluster_env(cluster)
    yield environment
    csbs(environment, "link", "clear", SOURCE, TARGET)


def test_link_set_list_and_clear(env: dict[str, str]) -> None:
    link = csbs_json(
        env, "link", "set", SOURCE, TARGET, "--bandwidth", "100Mbit/s", "--latency-ms", "20"
    )
    assert link == {
        "source_region_id": SOURCE,
        "target_region_id": TARGET,
        "bandwidth_bytes_per_second": "12500000",
        "latency_ms": 20,
        "cut": False,
    }
    cut = csbs(env, "link", "set", SOURCE, TARGET, "--bandwidth", "12.5MB/s", "--cut").stdout
    assert "CUT" in cut and "12.5 MB/s" in cut
    listed = csbs(env, "link", "list").stdout
    assert SOURCE in listed and TARGET in listed and "CUT" in listed
    assert "cleared" in csbs(env, "link", "clear", SOURCE, TARGET).stdout
    assert "no link was set" in csbs(env, "link", "clear", SOURCE, TARGET).stdout
    assert "every pair is unlimited" in csbs(env, "link", "list").stdout


def test_link_refusals_are_one_line_naming_what_is_wrong(env: dict[str, str]) -> None:
    bad = csbs(env, "link", "set", SOURCE, TARGET, "--bandwidth", "fast", code=EXIT_USAGE)
    assert bad.stderr.startswith("error: --bandwidth") and bad.stderr.count("\n") == 1
    same = csbs(env, "link", "set", SOURCE, SOURCE, code=EXIT_REFUSED)
    assert "link.target_region_id" in same.stderr
    user_only = {k: v for k, v in env.items() if k != "CSBS_OPERATOR_TOKEN"}
    refused = csbs(user_only, "link", "list", code=EXIT_REFUSED)
    assert refused.stderr.startswith("error:")


def test_rpo_shows_the_newest_replica_and_its_age(cluster: Cluster, env: dict[str, str]) -> None:
    north = node(cluster.channel(SOURCE))
    server = make_server(north, [1], name="rpo-cli")
    write(north, server.server_id, 0, 0, seeded_bytes(11, MIB))
    made = backup(north, server.server_id)
    assert made.status == pb.BACKUP_STATUS_AVAILABLE
    job = replicated(CoordinatorStub(cluster.coordinator_channel()), made.backup_id, SOURCE, TARGET)
    answer = csbs_json(env, "rpo", "--server", server.server_id)
    (point,) = answer["points"]
    assert point["has_replica"] and point["replica_id"] == job.replica_id
    assert point["source_backup_id"] == made.backup_id and point["target_region_id"] == TARGET
    assert point["replications"] == 1 and point["failed_replications"] == 0
    human = csbs(env, "rpo", "--target", TARGET).stdout
    assert server.server_id in human and "RPO NOW" in human and "1/0" in human
    assert "no server of yours" in csbs(env, "rpo", "--target", "cn-south-1").stdout
