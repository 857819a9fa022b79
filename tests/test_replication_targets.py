"""Issue 12: one hung region never stalls the list of replication targets (R5). With a target
region's node paused (SIGSTOP: alive, answering nothing), ListReplicationTargets still answers
well within the coordinator's 10 s node deadline, shows the paused region as unreachable (it
cannot be picked) and the others with the caller's projects; a region whose last answer said
it refuses replication stays out while it is silent; the command line shows the same. Timings
are not asserted tightly (a shared, noisy machine): only that a call with a 6 s deadline
succeeds where the old list waited 10 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from tests.harness import DEFAULT_REGIONS, Cluster, write_cluster_config
from tests.test_cli import cluster_env, csbs, csbs_json

SOURCE = "cn-north-4"
TARGET = "cn-east-3"  # accepts replication; paused in these tests
OTHER_TARGET = "ap-southeast-1"  # accepts replication; stays up
NO_REPLICATION = "cn-south-1"  # refuses replication (R5)
# Well under the old wait (the node deadline, 10 s), well over the targets deadline (2 s).
DEADLINE = 6.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The default regions and one more that accepts replication, with the coordinator."""
    regions = [
        *DEFAULT_REGIONS,
        {"id": OTHER_TARGET, "name": "AP Southeast-Singapore", "accepts_replication": True},
    ]
    path: Path = write_cluster_config(tmp_path_factory.mktemp("targets"), regions=regions)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _targets(cluster: Cluster) -> dict[str, cpb.ReplicationTarget]:
    answer = CoordinatorStub(cluster.coordinator_channel()).ListReplicationTargets(
        cpb.ListReplicationTargetsRequest(source_region_id=SOURCE), timeout=DEADLINE
    )
    return {t.region_id: t for t in answer.targets}


def _answering_again(cluster: Cluster, region_id: str) -> dict[str, cpb.ReplicationTarget]:
    """The targets once a resumed region answers again (a question asked while it was paused
    may still be ending: bounded)."""
    deadline = time.monotonic() + 15
    while True:
        targets = _targets(cluster)
        if region_id not in targets or not targets[region_id].unreachable:
            return targets
        assert time.monotonic() < deadline, targets[region_id].unreachable_reason
        time.sleep(0.2)


def _projects(target: cpb.ReplicationTarget) -> dict[str, bool]:
    return {p.project_id: p.main for p in target.projects}


def test_a_paused_region_is_listed_as_unreachable_and_never_stalls_the_list(
    cluster: Cluster,
) -> None:
    before = _targets(cluster)
    assert list(before) == [TARGET, OTHER_TARGET]  # R5: cn-south-1 is not offered
    assert not any(t.unreachable for t in before.values())

    cluster.node(TARGET).pause()
    try:
        # Several callers at once: each answers within its deadline, the hung region once
        # asked for all of them.
        with ThreadPoolExecutor(max_workers=6) as callers:
            answers = list(callers.map(lambda _: _targets(cluster), range(6)))
    finally:
        cluster.node(TARGET).resume()

    for targets in answers:
        assert list(targets) == [TARGET, OTHER_TARGET]
        hung, up = targets[TARGET], targets[OTHER_TARGET]
        assert hung.unreachable
        assert "did not answer" in hung.unreachable_reason
        assert hung.display_name == before[TARGET].display_name  # as it last said
        assert not hung.projects  # it cannot be picked now
        assert not up.unreachable and not up.unreachable_reason
        assert _projects(up) == {f"{OTHER_TARGET}_default": True}

    after = _answering_again(cluster, TARGET)
    assert _projects(after[TARGET]) == {"cn-east-3_default": True, "cn-east-3_dr": False}


def test_r5_a_silent_region_that_last_refused_replication_stays_out(cluster: Cluster) -> None:
    assert NO_REPLICATION not in _targets(cluster)  # it answers: it refuses replication
    cluster.node(NO_REPLICATION).pause()
    try:
        assert list(_targets(cluster)) == [TARGET, OTHER_TARGET]
        # A coordinator that never heard from it cannot know it refuses: shown unreachable.
        cluster.coordinator.restart()
        targets = _targets(cluster)
        assert list(targets) == [TARGET, NO_REPLICATION, OTHER_TARGET]
        assert targets[NO_REPLICATION].unreachable
        assert not targets[NO_REPLICATION].projects
    finally:
        cluster.node(NO_REPLICATION).resume()
    assert list(_answering_again(cluster, NO_REPLICATION)) == [TARGET, OTHER_TARGET]


def test_csbs_region_targets_shows_an_unreachable_region_as_such(cluster: Cluster) -> None:
    env = cluster_env(cluster)
    _targets(cluster)  # the coordinator has heard every region
    cluster.node(TARGET).pause()
    try:
        listed = csbs_json(env, "region", "targets")
        table = csbs(env, "region", "targets")
    finally:
        cluster.node(TARGET).resume()

    by_region = {t["region_id"]: t for t in listed}
    assert list(by_region) == [TARGET, OTHER_TARGET]
    assert by_region[TARGET]["unreachable"] is True
    assert "did not answer" in by_region[TARGET]["unreachable_reason"]
    assert by_region[TARGET]["projects"] == []
    assert by_region[OTHER_TARGET]["unreachable"] is False
    assert by_region[OTHER_TARGET]["unreachable_reason"] == ""

    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:] if line.strip()}
    assert "unreachable: did not answer" in rows[TARGET]
    assert "reachable" in rows[OTHER_TARGET] and "unreachable" not in rows[OTHER_TARGET]
    assert f"{OTHER_TARGET}_default (main)" in rows[OTHER_TARGET]
    assert "cannot be replicated to" in table.stderr
