"""Issue 11, item 6: replica retention counts per protected server, as backup retention does:
"keep N replicas" keeps the newest N replicas of each server in the target region. Real region
nodes and coordinator on a simulated clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import MIB, all_backups, make_server, node, seeded_bytes, write
from tests.replication_helpers import advance_to_hour

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
DAY = 86400
SERVERS = 3
KEEP_REPLICAS = 2
DAYS = 5

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(write_cluster_config(tmp_path, simulated_clock=True)) as running:
        running.start(coordinator=True)
        yield running


def test_replica_retention_keeps_n_replicas_of_each_protected_server(simulated: Cluster) -> None:
    channel = simulated.coordinator_channel()
    coordinator, admin = CoordinatorStub(channel), CoordinatorAdminStub(channel)
    north = node(simulated.channel(SOURCE))
    servers = [make_server(north, [2]) for _ in range(SERVERS)]
    advance_to_hour(channel, 4)
    policy = coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(
            policy=cpb.Policy(
                region_id=SOURCE,
                name="per_server",
                enabled=True,
                server_ids=[s.server_id for s in servers],
                backup_schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=0"),
                replication=cpb.PolicyReplication(
                    enabled=True,
                    target_region_id=TARGET,
                    schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=0"),
                    replica_keep_count=KEEP_REPLICAS,
                ),
            )
        ),
        timeout=30,
    )
    for day in range(DAYS):
        for index, server in enumerate(servers):
            write(north, server.server_id, 0, 0, seeded_bytes(day * 10 + index, MIB))
        admin.AdvanceClock(cpb.AdvanceClockRequest(by_seconds=DAY), timeout=600)

    server_of = {
        b.backup_id: b.server_id for b in all_backups(north) if b.policy_id == policy.policy_id
    }
    assert len(server_of) == SERVERS * DAYS  # no backup retention: every backup is there
    east = node(simulated.channel(TARGET))
    replicas = [
        b
        for b in all_backups(east)
        if b.origin.policy_id == policy.policy_id and b.status == pb.BACKUP_STATUS_AVAILABLE
    ]
    per_server = Counter(server_of[r.origin.source_backup_id] for r in replicas)
    assert per_server == {s.server_id: KEEP_REPLICAS for s in servers}
    # The ones kept are each server's newest.
    newest = {
        s.server_id: sorted(
            (b for b in all_backups(north, server_id=s.server_id)),
            key=lambda b: b.created_at.ToDatetime(),
        )[-KEEP_REPLICAS:]
        for s in servers
    }
    assert {r.origin.source_backup_id for r in replicas} == {
        b.backup_id for kept in newest.values() for b in kept
    }
