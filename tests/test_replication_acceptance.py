"""Issue 11, items 2 and 5: what ReplicateBackup promises when it answers. An accepted job
already holds its source backup (it cannot be deleted before the copy starts), and an
idempotency token (or a policy's request ID) answers with the first job (policy) only for the
same parameters: reused with another one it is INVALID_ARGUMENT naming the token and the
parameter. Real region nodes and a real coordinator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from tests.harness import DEFAULT_REGIONS, Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    backup,
    make_server,
    node,
    refusal,
    seeded_bytes,
    write,
)
from tests.replication_helpers import follow, replicate

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
TARGET_DR = "cn-east-3_dr"
THIRD = "cn-south-1"  # accepts replication in this cluster
JOB_WORKERS = 4  # the coordinator's default: jobs copied at once

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The default regions, all three accepting replication."""
    regions = [{**r, "accepts_replication": True} for r in DEFAULT_REGIONS]
    path: Path = write_cluster_config(tmp_path_factory.mktemp("acceptance"), regions=regions)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture(scope="module")
def coordinator(cluster: Cluster) -> CoordinatorStub:
    return CoordinatorStub(cluster.coordinator_channel())


def _backup_in(cluster: Cluster, region_id: str, size_mib: int, seed: int) -> pb.Backup:
    stub = node(cluster.channel(region_id))
    server = make_server(stub, [size_mib])
    write(stub, server.server_id, 0, 0, seeded_bytes(seed, size_mib * MIB))
    return backup(stub, server.server_id)


def test_an_accepted_job_holds_its_source_backup_before_replicate_answers(
    cluster: Cluster, coordinator: CoordinatorStub
) -> None:
    """Every job worker is kept busy by jobs whose source region is paused, so the job under
    test waits in the queue when ReplicateBackup answers: deleting its source backup at once
    must still be refused, and the job then succeeds."""
    blockers = [_backup_in(cluster, THIRD, 32, seed=100 + i) for i in range(JOB_WORKERS)]
    source = _backup_in(cluster, SOURCE, 4, seed=110)
    paused = cluster.node(THIRD)
    blocker_jobs = [replicate(coordinator, b.backup_id, THIRD, TARGET) for b in blockers]
    paused.pause()
    try:
        job = replicate(coordinator, source.backup_id, SOURCE, TARGET)
        north = node(cluster.channel(SOURCE))
        code, details = refusal(
            lambda: north.DeleteBackup(
                pb.DeleteBackupRequest(backup_id=source.backup_id), timeout=30
            )
        )
        waiting = coordinator.GetReplicationJob(
            cpb.GetReplicationJobRequest(job_id=job.job_id), timeout=30
        )
    finally:
        paused.resume()
    assert waiting.status == cpb.REPLICATION_JOB_STATUS_WAITING or (
        code == grpc.StatusCode.FAILED_PRECONDITION
    ), "the job under test did not wait in the queue: the test proves nothing"
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert job.job_id in details, details
    done = follow(coordinator, job.job_id)[-1]
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
    for blocker in blocker_jobs:
        assert follow(coordinator, blocker.job_id)[-1].status == (
            cpb.REPLICATION_JOB_STATUS_SUCCESS
        )
    # Once the job has ended the backup is released: it can be deleted now.
    north.DeleteBackup(pb.DeleteBackupRequest(backup_id=source.backup_id), timeout=30)


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"name": "another_name"}, "name"),
        ({"description": "another description"}, "description"),
        ({"target_project_id": TARGET_DR}, "target_project_id"),
        ({"backup_id": "OTHER"}, "backup_id"),
        ({"target_region_id": THIRD}, "target_region_id"),
    ],
)
def test_an_idempotency_token_reused_with_another_parameter_is_invalid_naming_both(
    cluster: Cluster, coordinator: CoordinatorStub, changed: dict[str, str], field: str
) -> None:
    first_backup = _backup_in(cluster, SOURCE, 1, seed=120)
    token = f"token-{field}"
    first: dict[str, Any] = {
        "source_region_id": SOURCE,
        "backup_id": first_backup.backup_id,
        "target_region_id": TARGET,
        "name": "first_name",
        "description": "first description",
        "idempotency_token": token,
    }
    job = coordinator.ReplicateBackup(cpb.ReplicateBackupRequest(**first), timeout=30)
    if changed.get("backup_id") == "OTHER":
        changed = {"backup_id": _backup_in(cluster, SOURCE, 1, seed=121).backup_id}
    code, details = refusal(
        lambda: coordinator.ReplicateBackup(
            cpb.ReplicateBackupRequest(**{**first, **changed}), timeout=30
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert token in details and field in details and job.job_id in details, details
    # The same parameters (the target project named or left to its default) answer the job.
    same = coordinator.ReplicateBackup(
        cpb.ReplicateBackupRequest(**{**first, "target_project_id": "cn-east-3_default"}),
        timeout=30,
    )
    assert same.job_id == job.job_id
    assert follow(coordinator, job.job_id)[-1].status == cpb.REPLICATION_JOB_STATUS_SUCCESS


def _policy(server_id: str, **changes: Any) -> cpb.Policy:
    fields: dict[str, Any] = {
        "region_id": SOURCE,
        "name": "tokened",
        "description": "first",
        "enabled": True,
        "server_ids": [server_id],
        "backup_schedule": cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=0"),
        "replication": cpb.PolicyReplication(
            enabled=True,
            target_region_id=TARGET,
            schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=0"),
        ),
        **changes,
    }
    return cpb.Policy(**fields)


def test_a_policy_request_id_reused_with_another_parameter_is_invalid_naming_both(
    cluster: Cluster, coordinator: CoordinatorStub
) -> None:
    stub = node(cluster.channel(SOURCE))
    server = make_server(stub, [1])
    other = make_server(stub, [1])
    request_id = "policy-request-1"
    created = coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(policy=_policy(server.server_id), request_id=request_id),
        timeout=30,
    )
    for changes, field in (
        ({"name": "renamed"}, "name"),
        ({"description": "second"}, "description"),
        ({"server_ids": [other.server_id]}, "server_ids"),
        ({"backup_schedule": cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=4;BYMINUTE=0")}, "backup"),
        ({"retention": cpb.RetentionRule(keep_count=3)}, "retention"),
        ({"enabled": False}, "enabled"),
        ({"replication": None}, "replication"),
    ):
        policy = _policy(server.server_id, **changes)
        code, details = refusal(
            lambda p=policy: coordinator.CreatePolicy(  # type: ignore[misc]
                cpb.CreatePolicyRequest(policy=p, request_id=request_id), timeout=30
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, details)
        assert request_id in details and field in details, details
        assert created.policy_id in details, details
    # The same parameters, with the project named or left to its default, answer the policy.
    again = coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(
            policy=_policy(server.server_id, project_id="cn-north-4_default"),
            request_id=request_id,
        ),
        timeout=30,
    )
    assert again.policy_id == created.policy_id


def test_the_same_policy_request_sent_at_once_from_many_threads_makes_one_policy(
    cluster: Cluster, coordinator: CoordinatorStub
) -> None:
    """A client's retry racing its first try (or a double click in the console): every one of
    the concurrent CreatePolicy calls with one request ID answers the one policy it made; none
    fails on the request ID already being recorded."""
    stub = node(cluster.channel(SOURCE))
    server = make_server(stub, [1])
    policy = _policy(server.server_id, name="raced")
    request = cpb.CreatePolicyRequest(policy=policy, request_id="policy-request-raced")
    start = threading.Barrier(8)

    def create(_: int) -> cpb.Policy:
        start.wait()  # all eight calls leave at once
        made: cpb.Policy = coordinator.CreatePolicy(request, timeout=30)
        return made

    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(create, range(8)))
    assert len({p.policy_id for p in made}) == 1
    listed = coordinator.ListPolicies(cpb.ListPoliciesRequest(region_id=SOURCE), timeout=30)
    assert [p.policy_id for p in listed.policies if p.name == "raced"] == [made[0].policy_id]
