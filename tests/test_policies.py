"""Backup policies with replication (M2), execute-now (M3), retention, and the simulated
cluster clock, against real region nodes and the coordinator: the rules R4a/R4b side by side,
policy replication keeping R1-R3 and R5, run records, the skip rule, and the schedule limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub, RegionNodeStub
from tests.harness import Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    all_backups,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    write,
)
from tests.replication_helpers import advance_to_hour, follow, replicated

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
NO_REPLICATION = "cn-south-1"
DAILY_2AM = "FREQ=DAILY;BYHOUR=2;BYMINUTE=0"
DAILY_3AM = "FREQ=DAILY;BYHOUR=3;BYMINUTE=0"
DAY = 86400

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster whose clock moves only when the operator advances it."""
    path: Path = write_cluster_config(tmp_path_factory.mktemp("policies"), simulated_clock=True)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def _stubs(cluster: Cluster) -> tuple[CoordinatorStub, CoordinatorAdminStub]:
    channel = cluster.coordinator_channel()
    return CoordinatorStub(channel), CoordinatorAdminStub(channel)


def _policy(
    server_ids: list[str],
    name: str = "daily",
    keep_count: int = 0,
    replica_keep_count: int = 0,
    replication: bool = True,
    backup_rrule: str = DAILY_2AM,
    replication_rrule: str = DAILY_3AM,
) -> cpb.Policy:
    policy = cpb.Policy(
        region_id=SOURCE,
        name=name,
        enabled=True,
        server_ids=server_ids,
        backup_schedule=cpb.Schedule(rrule=backup_rrule),
    )
    if keep_count:
        policy.retention.keep_count = keep_count
    if replication:
        policy.replication.CopyFrom(
            cpb.PolicyReplication(
                enabled=True,
                target_region_id=TARGET,
                schedule=cpb.Schedule(rrule=replication_rrule),
                replica_keep_count=replica_keep_count,
            )
        )
    return policy


def _create(coordinator: CoordinatorStub, policy: cpb.Policy) -> cpb.Policy:
    created: cpb.Policy = coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(policy=policy), timeout=30
    )
    return created


def _server(cluster: Cluster, size_mib: int = 4, seed: int = 0) -> pb.Server:
    stub = node(cluster.channel(SOURCE))
    server = make_server(stub, [size_mib])
    write(stub, server.server_id, 0, 0, seeded_bytes(seed, size_mib * MIB))
    return server


def _runs(coordinator: CoordinatorStub, policy_id: str) -> list[cpb.PolicyRun]:
    answer = coordinator.ListPolicyRuns(
        cpb.ListPolicyRunsRequest(policy_id=policy_id, page_size=1000), timeout=30
    )
    return list(answer.runs)


def _wait_run(coordinator: CoordinatorStub, policy_id: str, run_id: str) -> cpb.PolicyRun:
    deadline = time.monotonic() + 120
    while True:
        (run,) = [r for r in _runs(coordinator, policy_id) if r.run_id == run_id]
        if run.status != cpb.POLICY_RUN_STATUS_RUNNING:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def _execute(coordinator: CoordinatorStub, policy_id: str, kind: int) -> cpb.PolicyRun:
    run = coordinator.ExecutePolicy(
        cpb.ExecutePolicyRequest(policy_id=policy_id, kind=kind),  # type: ignore[arg-type]
        timeout=60,
    )
    return _wait_run(coordinator, policy_id, run.run_id)


def _advance(admin: CoordinatorAdminStub, seconds: int) -> datetime:
    state = admin.AdvanceClock(cpb.AdvanceClockRequest(by_seconds=seconds), timeout=600)
    now: datetime = state.now.ToDatetime(tzinfo=UTC)
    return now


def test_m2_a_daily_policy_for_30_simulated_days(simulated: Cluster) -> None:
    """30 backups; retention keeps the newest 7; each replicated once to the target region;
    replica retention keeps the newest 5 there, available and byte-identical."""
    coordinator, admin = _stubs(simulated)
    north = node(simulated.channel(SOURCE))
    server = make_server(north, [8])
    advance_to_hour(simulated.coordinator_channel(), 4)
    policy = _create(coordinator, _policy([server.server_id], keep_count=7, replica_keep_count=5))
    expected: list[str] = []  # the disk's sha256 at each day's backup
    for day in range(30):
        write(north, server.server_id, 0, (day % 8) * MIB, seeded_bytes(1000 + day, MIB))
        expected.append(disk_sha256(north, server.server_id, 0))
        _advance(admin, DAY)

    runs = _runs(coordinator, policy.policy_id)
    backup_runs = [r for r in runs if r.kind == cpb.POLICY_RUN_KIND_BACKUP]
    replication_runs = [r for r in runs if r.kind == cpb.POLICY_RUN_KIND_REPLICATION]
    assert len(backup_runs) == len(replication_runs) == 30
    assert {r.status for r in runs} == {cpb.POLICY_RUN_STATUS_FINISHED}
    assert all(r.trigger == cpb.POLICY_RUN_TRIGGER_SCHEDULE for r in runs)
    made = [i.backup_id for r in backup_runs for i in r.items if i.action == "backed_up"]
    assert len(made) == len(set(made)) == 30
    day_of = {backup_id: day for day, backup_id in enumerate(made)}

    kept = [b for b in all_backups(north) if b.policy_id == policy.policy_id]
    assert sorted(b.backup_id for b in kept) == sorted(made[-7:])
    deleted = [i.backup_id for r in backup_runs for i in r.items if i.action == "deleted"]
    assert sorted(deleted) == sorted(made[:-7])

    jobs = coordinator.ListReplicationJobs(
        cpb.ListReplicationJobsRequest(policy_id=policy.policy_id, page_size=1000), timeout=30
    ).jobs
    assert sorted(j.source_backup_id for j in jobs) == sorted(made)  # each once
    assert {j.status for j in jobs} == {cpb.REPLICATION_JOB_STATUS_SUCCESS}
    assert {j.way for j in jobs} == {common_pb2.REPLICATION_WAY_POLICY}

    east = node(simulated.channel(TARGET))
    replicas = [b for b in all_backups(east) if b.origin.policy_id == policy.policy_id]
    assert sorted(r.origin.source_backup_id for r in replicas) == sorted(made[-5:])
    for replica in replicas:
        assert replica.status == pb.BACKUP_STATUS_AVAILABLE
        copy = server_from_backup(east, replica.backup_id)
        assert (
            disk_sha256(east, copy.server_id, 0)
            == expected[day_of[replica.origin.source_backup_id]]
        )


def test_r4b_and_r4a_side_by_side_on_the_same_backup(simulated: Cluster) -> None:
    coordinator, _ = _stubs(simulated)
    server = _server(simulated, seed=2)
    policy = _create(coordinator, _policy([server.server_id], name="r4"))
    backup_run = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_BACKUP)
    assert backup_run.trigger == cpb.POLICY_RUN_TRIGGER_EXECUTE_NOW
    (backup_id,) = [i.backup_id for i in backup_run.items if i.action == "backed_up"]

    first = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_REPLICATION)
    (job_id,) = first.job_ids
    job = coordinator.GetReplicationJob(cpb.GetReplicationJobRequest(job_id=job_id))
    assert job.status == cpb.REPLICATION_JOB_STATUS_SUCCESS
    assert job.way == common_pb2.REPLICATION_WAY_POLICY_EXECUTE  # M3
    east = node(simulated.channel(TARGET))
    east.DeleteBackup(pb.DeleteBackupRequest(backup_id=job.replica_id))

    # R4b: never again by a policy, even though the replica is gone.
    again = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_REPLICATION)
    assert list(again.job_ids) == []
    (skip,) = [i for i in again.items if i.backup_id == backup_id]
    assert skip.action == "skipped"
    assert skip.reason.startswith("R4b"), skip.reason
    # R4a: a manual replication may.
    manual = replicated(coordinator, backup_id, SOURCE, TARGET)
    assert manual.way == common_pb2.REPLICATION_WAY_MANUAL
    still = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_REPLICATION)
    assert list(still.job_ids) == []


def test_m2_never_picks_backups_made_by_hand(simulated: Cluster) -> None:
    coordinator, _ = _stubs(simulated)
    server = _server(simulated, seed=3)
    north = node(simulated.channel(SOURCE))
    by_hand = north.CreateBackup(pb.CreateBackupRequest(server_id=server.server_id))
    follow_backup = list(
        north.WatchBackup(pb.GetBackupRequest(backup_id=by_hand.backup_id), timeout=60)
    )
    assert follow_backup[-1].status == pb.BACKUP_STATUS_AVAILABLE
    policy = _create(coordinator, _policy([server.server_id], name="byhand"))
    run = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_REPLICATION)
    assert list(run.job_ids) == []
    assert all(i.backup_id != by_hand.backup_id for i in run.items)


def test_m3_execute_now_with_nothing_to_do_answers_with_no_jobs(simulated: Cluster) -> None:
    coordinator, _ = _stubs(simulated)
    server = _server(simulated, seed=4)
    policy = _create(coordinator, _policy([server.server_id], name="idle"))
    run = coordinator.ExecutePolicy(
        cpb.ExecutePolicyRequest(policy_id=policy.policy_id, kind=cpb.POLICY_RUN_KIND_REPLICATION)
    )
    assert list(run.job_ids) == []
    assert _wait_run(coordinator, policy.policy_id, run.run_id).status == (
        cpb.POLICY_RUN_STATUS_FINISHED
    )


def test_r5_a_target_that_stops_accepting_replication_gives_the_next_run_a_reason(
    simulated: Cluster,
) -> None:
    coordinator, admin = _stubs(simulated)
    server = _server(simulated, seed=5)
    policy = _create(coordinator, _policy([server.server_id], name="r5"))
    _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_BACKUP)
    target_admin = RegionNodeAdminStub(simulated.channel(TARGET))
    target_admin.SetReplicationCapability(
        pb.SetReplicationCapabilityRequest(accepts_replication=False)
    )
    try:
        _advance(admin, DAY)
    finally:
        target_admin.SetReplicationCapability(
            pb.SetReplicationCapabilityRequest(accepts_replication=True)
        )
    (run,) = [
        r for r in _runs(coordinator, policy.policy_id) if r.kind == cpb.POLICY_RUN_KIND_REPLICATION
    ]
    assert run.status == cpb.POLICY_RUN_STATUS_FINISHED
    assert run.reason.startswith("R5"), run.reason
    assert list(run.job_ids) == []


def test_policy_replication_keeps_r1_and_skips_with_the_rule(simulated: Cluster) -> None:
    """A backup without the system disk (R1b) made under a policy's ID is skipped, with R1b."""
    coordinator, _ = _stubs(simulated)
    north = node(simulated.channel(SOURCE))
    server = make_server(north, [4, 4])
    policy = _create(coordinator, _policy([server.server_id], name="r1b"))
    run = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_BACKUP)
    assert [i.action for i in run.items] == ["backed_up"]
    # Made by the node's policy call, with only the data disk: a policy backup breaking R1b.
    from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub

    internal = RegionNodeInternalStub(simulated.channel(SOURCE))
    data_only = internal.CreatePolicyBackup(
        pb.CreatePolicyBackupRequest(
            backup=pb.CreateBackupRequest(
                project_id=server.project_id, server_id=server.server_id, disk_indexes=[1]
            ),
            policy_id=policy.policy_id,
        )
    )
    list(north.WatchBackup(pb.GetBackupRequest(backup_id=data_only.backup_id), timeout=60))
    replication = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_REPLICATION)
    assert len(replication.job_ids) == 1
    (skipped,) = [i for i in replication.items if i.backup_id == data_only.backup_id]
    assert skipped.action == "skipped"
    assert skipped.reason.startswith("R1b"), skipped.reason


def test_policy_definitions_are_checked(simulated: Cluster) -> None:
    coordinator, _ = _stubs(simulated)
    north = node(simulated.channel(SOURCE))
    ecs = _server(simulated, seed=6)
    bms = make_server(north, [1], server_type=common_pb2.SERVER_TYPE_BMS)
    _create(coordinator, _policy([ecs.server_id], name="owner"))

    def refused(policy: cpb.Policy) -> tuple[grpc.StatusCode, str]:
        return refusal(lambda: _create(coordinator, policy))

    code, details = refused(_policy(["no-such-server"], name="x"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = refused(_policy([bms.server_id], name="x"))
    assert (code, details[:3]) == (grpc.StatusCode.FAILED_PRECONDITION, "R1a")
    code, details = refused(_policy([ecs.server_id], name="x"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already protected" in details
    to_south = _policy([], name="x")
    to_south.replication.target_region_id = NO_REPLICATION
    code, details = refused(to_south)
    assert (code, details[:2]) == (grpc.StatusCode.FAILED_PRECONDITION, "R5")
    code, details = refused(_policy([], name="a b"))
    assert (code, details[:2]) == (grpc.StatusCode.INVALID_ARGUMENT, "P1")
    other_region = _policy([], name="x")
    other_region.replication.target_project_id = "cn-north-4_default"
    code, _ = refused(other_region)
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("rrule", "timezone", "mentions"),
    [
        ("FREQ=HOURLY;BYHOUR=1;BYMINUTE=0", "", "FREQ must be DAILY or WEEKLY"),
        ("FREQ=DAILY;INTERVAL=2;BYHOUR=1;BYMINUTE=0", "", "INTERVAL not allowed"),
        ("FREQ=DAILY;BYMINUTE=0", "", "BYHOUR is required"),
        ("FREQ=DAILY;BYHOUR=1", "", "BYMINUTE is required"),
        ("FREQ=WEEKLY;BYHOUR=1;BYMINUTE=0", "", "needs BYDAY"),
        ("FREQ=DAILY;BYHOUR=1;BYMINUTE=0,30", "", "at least one hour"),
        ("FREQ=DAILY;BYHOUR=23,0;BYMINUTE=0,45", "", "at least one hour"),
        ("FREQ=DAILY;BYHOUR=2;BYMINUTE=0", "Mars/Olympus", "not an IANA time zone"),
        ("", "", "rrule is required"),
    ],
)
def test_schedule_limits_are_refused_naming_the_field_and_limit(
    simulated: Cluster, rrule: str, timezone: str, mentions: str
) -> None:
    coordinator, _ = _stubs(simulated)
    for field in ("backup_schedule", "replication.schedule"):
        policy = _policy([], name="limits")
        schedule = (
            policy.backup_schedule if field == "backup_schedule" else (policy.replication.schedule)
        )
        schedule.rrule, schedule.timezone = rrule, timezone
        code, details = refusal(lambda p=policy: _create(coordinator, p))  # type: ignore[misc]
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(field), details
        assert mentions in details, details


def test_schedules_run_in_the_policys_time_zone(simulated: Cluster) -> None:
    coordinator, _ = _stubs(simulated)
    policy = _policy([], name="shanghai", replication=False)
    policy.backup_schedule.rrule = "FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=14;BYMINUTE=0"
    policy.backup_schedule.timezone = "Asia/Shanghai"
    created = _create(coordinator, policy)
    next_at = created.next_backup_at.ToDatetime(tzinfo=UTC)
    local = next_at.astimezone(datetime.now(UTC).astimezone().tzinfo).astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Shanghai")
    )
    assert (local.weekday() in (0, 3), local.hour, local.minute) == (True, 14, 0)


def test_the_skip_rule_a_run_still_going_makes_the_next_one_skipped(tmp_path: Path) -> None:
    """A replication run held open on purpose (its target paused) is still going when the
    scheduled replication falls due: that one is recorded as skipped, not queued. (A short
    retry budget, so that the stalled copy is retried soon after the target is back.)"""
    config = write_cluster_config(
        tmp_path, simulated_clock=True, coordinator={"retry_budget_seconds": 10}
    )
    with Cluster(config) as cluster:
        cluster.start(coordinator=True)
        _check_skip_rule(cluster)


def _check_skip_rule(simulated: Cluster) -> None:
    coordinator, admin = _stubs(simulated)
    server = _server(simulated, size_mib=64, seed=7)
    policy = _create(coordinator, _policy([server.server_id], name="skip"))
    _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_BACKUP)
    target = simulated.node(TARGET)
    held = coordinator.ExecutePolicy(
        cpb.ExecutePolicyRequest(policy_id=policy.policy_id, kind=cpb.POLICY_RUN_KIND_REPLICATION)
    )
    target.pause()
    try:
        assert held.status == cpb.POLICY_RUN_STATUS_RUNNING
        _advance(admin, DAY)
    finally:
        target.resume()
    runs = _runs(coordinator, policy.policy_id)
    scheduled = [
        r
        for r in runs
        if r.trigger == cpb.POLICY_RUN_TRIGGER_SCHEDULE
        and r.kind == cpb.POLICY_RUN_KIND_REPLICATION
    ]
    assert [r.status for r in scheduled] == [cpb.POLICY_RUN_STATUS_SKIPPED]
    assert held.run_id in scheduled[0].reason
    finished = _wait_run(coordinator, policy.policy_id, held.run_id)
    assert finished.status == cpb.POLICY_RUN_STATUS_FINISHED
    assert [i.action for i in finished.items] == ["replicated"]


def test_the_cluster_clock_is_simulated_persisted_and_never_goes_back(simulated: Cluster) -> None:
    coordinator, admin = _stubs(simulated)
    before = coordinator.GetClock(cpb.GetClockRequest())
    assert before.simulated
    now = _advance(admin, 10 * DAY)
    assert now - before.now.ToDatetime(tzinfo=UTC) >= timedelta(days=10)
    back = Timestamp()
    back.FromDatetime(now - timedelta(hours=1))
    code, details = refusal(lambda: admin.AdvanceClock(cpb.AdvanceClockRequest(to=back)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "never goes backwards" in details
    # Timestamps on resources in every process come from the cluster clock.
    north: RegionNodeStub = node(simulated.channel(SOURCE))
    server = make_server(north, [1])
    made = server.created_at.ToDatetime(tzinfo=UTC)
    assert abs((made - now).total_seconds()) < 60
    # A restarted coordinator and node keep the simulated time.
    simulated.coordinator.stop()
    simulated.coordinator.restart()
    simulated.node(SOURCE).stop()
    simulated.node(SOURCE).restart()
    coordinator, admin = _stubs(simulated)
    after = coordinator.GetClock(cpb.GetClockRequest()).now.ToDatetime(tzinfo=UTC)
    assert after >= now
    later = node(simulated.channel(SOURCE)).GetServer(
        pb.GetServerRequest(server_id=server.server_id)
    )
    assert later.created_at == server.created_at


def test_a_failed_policy_replication_is_retried_by_the_next_run(tmp_path: Path) -> None:
    config = write_cluster_config(
        tmp_path,
        simulated_clock=True,
        coordinator={"retry_budget_seconds": 2, "cleanup_interval_seconds": 1},
    )
    with Cluster(config) as cluster:
        cluster.start(coordinator=True)
        coordinator, _ = _stubs(cluster)
        server = _server(cluster, size_mib=64, seed=8)
        policy = _create(coordinator, _policy([server.server_id], name="retry"))
        _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_BACKUP)
        run = coordinator.ExecutePolicy(
            cpb.ExecutePolicyRequest(
                policy_id=policy.policy_id, kind=cpb.POLICY_RUN_KIND_REPLICATION
            )
        )
        cluster.node(TARGET).kill()
        failed = _wait_run(coordinator, policy.policy_id, run.run_id)
        (item,) = failed.items
        assert item.action == "failed", failed
        assert TARGET in item.reason
        cluster.node(TARGET).restart()
        again = _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_REPLICATION)
        (retried,) = again.items
        assert retried.action == "replicated", again
        assert retried.backup_id == item.backup_id
        job = coordinator.GetReplicationJob(cpb.GetReplicationJobRequest(job_id=retried.job_id))
        east = node(cluster.channel(TARGET))
        copy = server_from_backup(east, job.replica_id)
        north = node(cluster.channel(SOURCE))
        assert disk_sha256(east, copy.server_id, 0) == disk_sha256(north, server.server_id, 0)


def test_a_policy_deleted_during_a_run_leaves_nothing_half_done(simulated: Cluster) -> None:
    coordinator, _ = _stubs(simulated)
    server = _server(simulated, size_mib=128, seed=9)
    policy = _create(coordinator, _policy([server.server_id], name="deleted"))
    _execute(coordinator, policy.policy_id, cpb.POLICY_RUN_KIND_BACKUP)
    run = coordinator.ExecutePolicy(
        cpb.ExecutePolicyRequest(policy_id=policy.policy_id, kind=cpb.POLICY_RUN_KIND_REPLICATION)
    )
    coordinator.DeletePolicy(cpb.DeletePolicyRequest(policy_id=policy.policy_id))
    code, _ = refusal(
        lambda: coordinator.GetPolicy(cpb.GetPolicyRequest(policy_id=policy.policy_id))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    (job_id,) = run.job_ids
    done = follow(coordinator, job_id)[-1]
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS
    east = node(simulated.channel(TARGET))
    leftovers = [
        b
        for b in all_backups(east)
        if b.origin.policy_id == policy.policy_id and b.status != pb.BACKUP_STATUS_AVAILABLE
    ]
    assert leftovers == []
    north = node(simulated.channel(SOURCE))
    assert [b.status for b in all_backups(north, server_id=server.server_id)] == [
        pb.BACKUP_STATUS_AVAILABLE
    ]
    # The server is free for another policy.
    _create(coordinator, _policy([server.server_id], name="next"))


def test_policies_are_updated_listed_and_change_servers_and_a_disabled_one_never_runs(
    simulated: Cluster,
) -> None:
    coordinator, admin = _stubs(simulated)
    first, second = _server(simulated, seed=11), _server(simulated, seed=12)
    policy = _create(coordinator, _policy([first.server_id], name="editable", replication=False))
    assert policy.project_id == "cn-north-4_default"
    assert policy.next_backup_at.seconds > 0
    assert not policy.HasField("replication")

    listed = coordinator.ListPolicies(
        cpb.ListPoliciesRequest(region_id=SOURCE, page_size=1000)
    ).policies
    assert policy.policy_id in [p.policy_id for p in listed]

    added = coordinator.AddPolicyServers(
        cpb.PolicyServersRequest(policy_id=policy.policy_id, server_ids=[second.server_id])
    )
    assert list(added.server_ids) == [first.server_id, second.server_id]
    removed = coordinator.RemovePolicyServers(
        cpb.PolicyServersRequest(policy_id=policy.policy_id, server_ids=[first.server_id])
    )
    assert list(removed.server_ids) == [second.server_id]

    change = cpb.Policy(policy_id=policy.policy_id, name="renamed", enabled=False)
    change.retention.keep_days = 3
    updated = coordinator.UpdatePolicy(
        cpb.UpdatePolicyRequest(policy=change, update_fields=["name", "enabled", "retention"])
    )
    assert (updated.name, updated.enabled, updated.retention.keep_days) == ("renamed", False, 3)
    assert updated.backup_schedule.rrule == DAILY_2AM  # untouched
    assert not updated.HasField("next_backup_at")
    code, details = refusal(
        lambda: coordinator.UpdatePolicy(
            cpb.UpdatePolicyRequest(policy=change, update_fields=["region_id"])
        )
    )
    assert (code, "region_id" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)

    _advance(admin, 2 * DAY)
    assert _runs(coordinator, policy.policy_id) == []
    enable = cpb.Policy(policy_id=policy.policy_id, enabled=True)
    coordinator.UpdatePolicy(cpb.UpdatePolicyRequest(policy=enable, update_fields=["enabled"]))
    _advance(admin, DAY)
    (run,) = _runs(coordinator, policy.policy_id)
    assert [(i.action, i.server_id) for i in run.items] == [("backed_up", second.server_id)]
