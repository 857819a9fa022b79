"""Issue 11, item 1: every due policy run happens exactly once and every run ends, across any
number of `kill -9`s of the coordinator during AdvanceClock. Real region nodes and a real
coordinator on a simulated clock; the kill moments come from a seed that is printed (set
CSBS_SEED to replay one)."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import MIB, all_backups, make_server, node, seeded_bytes, write

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
DAYS = 16
KILLS = 6
KEEP = 3
REPLICA_KEEP = 2

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[Cluster]:
    path = write_cluster_config(
        tmp_path, simulated_clock=True, coordinator={"cleanup_interval_seconds": 1}
    )
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _stubs(cluster: Cluster) -> tuple[CoordinatorStub, CoordinatorAdminStub]:
    channel = cluster.coordinator_channel()
    return CoordinatorStub(channel), CoordinatorAdminStub(channel)


def _runs(coordinator: CoordinatorStub, policy_id: str) -> list[cpb.PolicyRun]:
    answer = coordinator.ListPolicyRuns(
        cpb.ListPolicyRunsRequest(policy_id=policy_id, page_size=1000), timeout=30
    )
    return list(answer.runs)


def _daily(first: datetime, end: datetime) -> list[datetime]:
    """Every instant of a daily schedule from `first` up to `end` (inclusive)."""
    instants = []
    while first <= end:
        instants.append(first)
        first += timedelta(days=1)
    return instants


def _describe(run: cpb.PolicyRun) -> str:
    kind = cpb.PolicyRunKind.Name(run.kind)
    status = cpb.PolicyRunStatus.Name(run.status)
    return f"{kind} run due {run.scheduled_at.ToDatetime():%m-%d %H:%M} {status} {run.reason}"


def _advance_to(admin: CoordinatorAdminStub, to: datetime, timeout: float) -> grpc.Future:
    request = cpb.AdvanceClockRequest()
    request.to.FromDatetime(to)
    future: grpc.Future = admin.AdvanceClock.future(request, timeout=timeout)
    return future


def test_every_due_run_happens_exactly_once_and_ends_across_coordinator_kills(
    simulated: Cluster,
) -> None:
    seed = int(os.environ.get("CSBS_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (CSBS_SEED={seed} replays it)")
    rng = random.Random(seed)
    coordinator, admin = _stubs(simulated)
    north = node(simulated.channel(SOURCE))
    server = make_server(north, [4])
    write(north, server.server_id, 0, 0, seeded_bytes(seed % 1000, 4 * MIB))
    policy = coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(
            policy=cpb.Policy(
                region_id=SOURCE,
                name="crashproof",
                enabled=True,
                server_ids=[server.server_id],
                backup_schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=0"),
                retention=cpb.RetentionRule(keep_count=KEEP),
                replication=cpb.PolicyReplication(
                    enabled=True,
                    target_region_id=TARGET,
                    schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=0"),
                    replica_keep_count=REPLICA_KEEP,
                ),
            )
        ),
        timeout=30,
    )
    start = coordinator.GetClock(cpb.GetClockRequest(), timeout=10).now.ToDatetime(tzinfo=UTC)
    end = start + timedelta(days=DAYS)
    due = {
        cpb.POLICY_RUN_KIND_BACKUP: _daily(policy.next_backup_at.ToDatetime(tzinfo=UTC), end),
        cpb.POLICY_RUN_KIND_REPLICATION: _daily(
            policy.next_replication_at.ToDatetime(tzinfo=UTC), end
        ),
    }

    for kill in range(KILLS):
        advancing = _advance_to(admin, end, timeout=300)
        time.sleep(rng.uniform(0.05, 0.8))
        simulated.coordinator.kill()
        outcome = "finished" if advancing.done() and advancing.exception() is None else "cut"
        print(f"kill {kill + 1}: AdvanceClock {outcome}")
        simulated.coordinator.restart()
        coordinator, admin = _stubs(simulated)
    # Once more without faults: whatever is left falls due and runs; the call returns when
    # everything has ended.
    _advance_to(admin, end, timeout=300).result()

    runs = _runs(coordinator, policy.policy_id)
    left_running = [_describe(r) for r in runs if r.status == cpb.POLICY_RUN_STATUS_RUNNING]
    assert not left_running, (seed, left_running)
    for run in runs:
        if run.status == cpb.POLICY_RUN_STATUS_FAILED:
            assert run.reason, (seed, _describe(run))
    for kind, instants in due.items():
        scheduled = Counter(
            r.scheduled_at.ToDatetime(tzinfo=UTC)
            for r in runs
            if r.kind == kind and r.trigger == cpb.POLICY_RUN_TRIGGER_SCHEDULE
        )
        assert sorted(scheduled) == instants, (seed, kind, scheduled)
        assert set(scheduled.values()) == {1}, (seed, kind, scheduled)

    # What a run cut short left behind, the next ones picked up: retention holds at the end.
    kept = [
        b
        for b in all_backups(north)
        if b.policy_id == policy.policy_id and b.status == pb.BACKUP_STATUS_AVAILABLE
    ]
    assert len(kept) == KEEP, (seed, [b.backup_id for b in kept])
    east = node(simulated.channel(TARGET))
    replicas = [b for b in all_backups(east) if b.origin.policy_id == policy.policy_id]
    assert len(replicas) == REPLICA_KEEP, (seed, [(b.backup_id, b.status) for b in replicas])
