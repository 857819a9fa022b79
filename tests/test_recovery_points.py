"""Recovery points (issue 13): what RPO a configuration really gives. Two daily policies run side
by side on the simulated clock: one replicates over a link too slow to carry a day's changes in
a day, and its recovery point grows day by day; the other over a fast link, and its recovery
point stays under a day. GetRecoveryPoints reports, per server and target region, the newest
replica available and its backup's age now, and the worst and median over the days."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import MIB, make_server, node, seeded_bytes, write

SLOW_SOURCE, SLOW_TARGET = "cn-north-4", "cn-east-3"
FAST_SOURCE, FAST_TARGET = "cn-south-1", "cn-north-4"
CHUNK = 64 * 1024
DAY = 86400
DAILY_CHANGE = MIB
# A day's change takes a day and a half on the slow link; a few seconds on the fast one.
SLOW_RATE = DAILY_CHANGE * 2 // (3 * DAY)
FAST_RATE = 1_000_000
DAYS = 8

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path = write_cluster_config(
        tmp_path_factory.mktemp("rpo"), chunk_size=CHUNK, simulated_clock=True
    )
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _policy(coordinator: CoordinatorStub, source: str, target: str, server_id: str) -> None:
    coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(
            policy=cpb.Policy(
                region_id=source,
                name=f"daily_{source}",
                enabled=True,
                server_ids=[server_id],
                backup_schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=0"),
                replication=cpb.PolicyReplication(
                    enabled=True,
                    target_region_id=target,
                    schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=0"),
                ),
            )
        ),
        timeout=30,
    )


def _points(coordinator: CoordinatorStub, **fields: object) -> dict[str, cpb.RecoveryPoint]:
    answer = coordinator.GetRecoveryPoints(
        cpb.GetRecoveryPointsRequest(**fields),  # type: ignore[arg-type]
        timeout=30,
    )
    return {p.source_region_id: p for p in answer.points}


def test_rpo_grows_day_by_day_over_a_link_too_slow_and_stays_under_a_day_over_a_fast_one(
    simulated: Cluster,
) -> None:
    channel = simulated.coordinator_channel()
    coordinator, admin = CoordinatorStub(channel), CoordinatorAdminStub(channel)
    for source, target, rate in (
        (SLOW_SOURCE, SLOW_TARGET, SLOW_RATE),
        (FAST_SOURCE, FAST_TARGET, FAST_RATE),
    ):
        admin.SetLink(
            cpb.SetLinkRequest(
                link=cpb.Link(
                    source_region_id=source,
                    target_region_id=target,
                    bandwidth_bytes_per_second=rate,
                )
            )
        )
    servers = {}
    for source, target in ((SLOW_SOURCE, SLOW_TARGET), (FAST_SOURCE, FAST_TARGET)):
        stub = node(simulated.channel(source))
        server = make_server(stub, [2])
        write(stub, server.server_id, 0, 0, seeded_bytes(7, 2 * MIB))
        servers[source] = (stub, server.server_id)
        _policy(coordinator, source, target, server.server_id)
    none_yet = _points(coordinator)
    assert {p.has_replica for p in none_yet.values()} == {False}  # protected, never replicated

    start = coordinator.GetClock(cpb.GetClockRequest()).now.ToDatetime(tzinfo=UTC)
    midnight = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
    ages: dict[str, list[int]] = {SLOW_SOURCE: [], FAST_SOURCE: []}
    for day in range(DAYS):
        for stub, server_id in servers.values():  # a day's change: half the disk, new bytes
            offset = (day % 2) * MIB
            write(stub, server_id, 0, offset, seeded_bytes(100 + day, DAILY_CHANGE))
        end_of_day = midnight + timedelta(days=day + 1) - timedelta(seconds=1)
        moved = cpb.AdvanceClockRequest()
        moved.to.FromDatetime(end_of_day)
        admin.AdvanceClock(moved, timeout=600)
        points = _points(coordinator)
        for source in ages:
            point = points[source]
            ages[source].append(point.age_seconds if point.has_replica else -1)

    # The fast link: every day's backup replicated within the day (backup at 02:00, measured
    # at 23:59:59), so the recovery point never reaches a day.
    assert all(0 < age < DAY for age in ages[FAST_SOURCE]), ages
    # The slow link: a day's change needs a day and a half, so the recovery point falls
    # further behind day after day.
    slow = ages[SLOW_SOURCE]
    assert slow[-1] > 3 * DAY, slow
    assert all(b > a for a, b in zip(slow[2:-2:2], slow[4::2], strict=True)), slow

    over = _points(coordinator)
    fast, slowest = over[FAST_SOURCE], over[SLOW_SOURCE]
    assert fast.worst_seconds < DAY + 2 * 3600  # before its first replica, counted from its job
    assert slowest.worst_seconds >= slow[-1] and slowest.median_seconds > fast.median_seconds
    succeeded = coordinator.ListReplicationJobs(
        cpb.ListReplicationJobsRequest(
            source_region_id=FAST_SOURCE,
            status=cpb.REPLICATION_JOB_STATUS_SUCCESS,
            page_size=1000,
        ),
        timeout=30,
    ).jobs
    assert fast.replications == len(succeeded) >= DAYS and fast.failed_replications == 0
    assert slowest.replications < DAYS
    assert fast.target_region_id == FAST_TARGET and slowest.target_region_id == SLOW_TARGET

    # A range: the last two days only, and one server.
    last_two = cpb.GetRecoveryPointsRequest(server_id=servers[FAST_SOURCE][1])
    getattr(last_two, "from").FromDatetime(midnight + timedelta(days=DAYS - 2))
    (only,) = coordinator.GetRecoveryPoints(last_two, timeout=30).points
    assert only.server_id == servers[FAST_SOURCE][1] and only.replications == 2


def test_a_region_outage_on_day_12_shows_in_the_recovery_point(simulated: Cluster) -> None:
    """A daily policy over a fast link: the recovery point stays under a day, except on the
    day its source region is out (no backup, no replication): then it passes a day, and the
    worst over the fortnight says so."""
    channel = simulated.coordinator_channel()
    coordinator, admin = CoordinatorStub(channel), CoordinatorAdminStub(channel)
    stub = node(simulated.channel(FAST_SOURCE))
    server = make_server(stub, [2])
    write(stub, server.server_id, 0, 0, seeded_bytes(9, 2 * MIB))
    _policy(coordinator, FAST_SOURCE, FAST_TARGET, server.server_id)
    source_admin = RegionNodeAdminStub(simulated.channel(FAST_SOURCE))

    start = coordinator.GetClock(cpb.GetClockRequest()).now.ToDatetime(tzinfo=UTC)
    midnight = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
    ages = []
    for day in range(14):
        out = day == 12
        if out:
            source_admin.SetRegionOutage(pb.SetRegionOutageRequest(out=True, reason="day 12"))
        else:
            write(stub, server.server_id, 0, (day % 2) * MIB, seeded_bytes(200 + day, MIB))
        moved = cpb.AdvanceClockRequest()
        moved.to.FromDatetime(midnight + timedelta(days=day + 1) - timedelta(seconds=1))
        admin.AdvanceClock(moved, timeout=600)
        (point,) = _points(coordinator, source_region_id=FAST_SOURCE).values()
        ages.append(point.age_seconds)
        if out:
            source_admin.SetRegionOutage(pb.SetRegionOutageRequest(out=False))

    assert all(age < DAY for day, age in enumerate(ages) if day != 12), ages
    assert DAY < ages[12] < 2 * DAY, ages  # the day before's backup is the newest replica
    (point,) = _points(coordinator, source_region_id=FAST_SOURCE).values()
    assert point.worst_seconds >= ages[12]
    runs = coordinator.ListPolicyRuns(
        cpb.ListPolicyRunsRequest(policy_id=_policy_id(coordinator), page_size=1000),
        timeout=30,
    ).runs
    failed = [r for r in runs if r.status == cpb.POLICY_RUN_STATUS_FAILED]
    assert failed and all(r.reason for r in failed)


def _policy_id(coordinator: CoordinatorStub) -> str:
    (policy,) = coordinator.ListPolicies(
        cpb.ListPoliciesRequest(region_id=FAST_SOURCE), timeout=30
    ).policies
    return str(policy.policy_id)
