"""The coordinator's checks before a replication starts (M1): which regions are targets (R5, P3),
and every refusal of ReplicateBackup, each naming its rule or field. Against a real cluster:
three region nodes and the coordinator."""

from __future__ import annotations

import grpc
import pytest

from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from tests.harness import Cluster
from tests.node_helpers import backup, make_server, node, refusal

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
NO_REPLICATION = "cn-south-1"


@pytest.fixture(scope="module")
def coordinator(coordinated: Cluster) -> CoordinatorStub:
    return CoordinatorStub(coordinated.coordinator_channel())


@pytest.fixture(scope="module")
def ecs_backup(coordinated: Cluster) -> pb.Backup:
    """An available backup of an ECS with its system disk, in the source region."""
    stub = node(coordinated.channel(SOURCE))
    server = make_server(stub, [1, 1])
    return backup(stub, server.server_id)


def replicate(stub: CoordinatorStub, **fields: str) -> cpb.ReplicationJob:
    job: cpb.ReplicationJob = stub.ReplicateBackup(cpb.ReplicateBackupRequest(**fields), timeout=30)
    return job


@pytest.mark.timeout(120)
def test_r5_targets_are_the_other_regions_that_accept_replication(
    coordinator: CoordinatorStub,
) -> None:
    answer = coordinator.ListReplicationTargets(
        cpb.ListReplicationTargetsRequest(source_region_id=SOURCE), timeout=30
    )
    assert [t.region_id for t in answer.targets] == [TARGET]
    (target,) = answer.targets
    assert target.display_name == "CN East-Shanghai1"
    assert {p.project_id: p.main for p in target.projects} == {
        "cn-east-3_default": True,
        "cn-east-3_dr": False,
    }

    answer = coordinator.ListReplicationTargets(
        cpb.ListReplicationTargetsRequest(source_region_id=TARGET), timeout=30
    )
    assert [t.region_id for t in answer.targets] == [SOURCE]


@pytest.mark.timeout(120)
def test_unknown_source_region_is_not_found(coordinator: CoordinatorStub) -> None:
    code, details = refusal(
        lambda: coordinator.ListReplicationTargets(
            cpb.ListReplicationTargetsRequest(source_region_id="xx-nowhere-1"), timeout=30
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "xx-nowhere-1" in details

    code, details = refusal(
        lambda: replicate(
            coordinator, source_region_id="xx-nowhere-1", backup_id="b", target_region_id=TARGET
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "xx-nowhere-1" in details


@pytest.mark.timeout(120)
def test_unknown_target_region_is_not_found(coordinator: CoordinatorStub) -> None:
    code, details = refusal(
        lambda: replicate(
            coordinator, source_region_id=SOURCE, backup_id="b", target_region_id="xx-nowhere-1"
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "xx-nowhere-1" in details


@pytest.mark.timeout(120)
def test_source_region_as_target_is_invalid(coordinator: CoordinatorStub) -> None:
    code, details = refusal(
        lambda: replicate(
            coordinator, source_region_id=SOURCE, backup_id="b", target_region_id=SOURCE
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "target_region_id" in details


@pytest.mark.timeout(120)
def test_unknown_backup_is_not_found(coordinator: CoordinatorStub) -> None:
    code, details = refusal(
        lambda: replicate(
            coordinator,
            source_region_id=SOURCE,
            backup_id="00000000-0000-0000-0000-000000000000",
            target_region_id=TARGET,
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "00000000-0000-0000-0000-000000000000" in details


@pytest.mark.timeout(120)
def test_an_empty_source_region_is_invalid_naming_the_field(coordinator: CoordinatorStub) -> None:
    """Issue 14: an empty required field is INVALID_ARGUMENT naming it, not NOT_FOUND of ''."""
    code, details = refusal(
        lambda: coordinator.ListReplicationTargets(cpb.ListReplicationTargetsRequest(), timeout=30)
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "source_region_id is required")


@pytest.mark.timeout(120)
def test_a_backup_not_found_in_another_project_names_the_project_searched(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    """Issue 14: a backup asked for in the wrong project of the account says which project
    was searched."""
    east = node(coordinated.channel(TARGET))
    server = make_server(east, [1], project_id="cn-east-3_dr")
    made = backup(east, server.server_id, project_id="cn-east-3_dr")
    code, details = refusal(lambda: east.GetBackup(pb.GetBackupRequest(backup_id=made.backup_id)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == f"backup {made.backup_id!r} not found in project cn-east-3_default"


@pytest.mark.timeout(120)
def test_r5_a_region_that_refuses_replication_is_no_target(
    coordinator: CoordinatorStub, ecs_backup: pb.Backup
) -> None:
    code, details = refusal(
        lambda: replicate(
            coordinator,
            source_region_id=SOURCE,
            backup_id=ecs_backup.backup_id,
            target_region_id=NO_REPLICATION,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("R5"), details


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"name": "bad name!"}, "P1"),
        ({"name": "x" * 256}, "P1"),
        ({"name": "名字٣"}, "P1"),  # an Arabic-Indic digit is not an ASCII digit
        ({"description": "d" * 256}, "P2"),
        ({"idempotency_token": "not a token"}, "idempotency_token"),
        ({"idempotency_token": "t" * 65}, "idempotency_token"),
    ],
)
def test_p1_p2_and_token_format_are_checked(
    coordinator: CoordinatorStub, ecs_backup: pb.Backup, fields: dict[str, str], names: str
) -> None:
    code, details = refusal(
        lambda: replicate(
            coordinator,
            source_region_id=SOURCE,
            backup_id=ecs_backup.backup_id,
            target_region_id=TARGET,
            **fields,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert names in details


@pytest.mark.timeout(120)
def test_p3_a_project_not_in_the_target_region_is_not_found(
    coordinator: CoordinatorStub, ecs_backup: pb.Backup
) -> None:
    code, details = refusal(
        lambda: replicate(
            coordinator,
            source_region_id=SOURCE,
            backup_id=ecs_backup.backup_id,
            target_region_id=TARGET,
            target_project_id="cn-north-4_default",  # a project of another region
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("P3"), details


@pytest.mark.timeout(120)
def test_r1b_a_backup_without_the_system_disk_is_refused(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    stub = node(coordinated.channel(SOURCE))
    server = make_server(stub, [1, 1])
    data_only = backup(stub, server.server_id, disk_indexes=[1])
    code, details = refusal(
        lambda: replicate(
            coordinator,
            source_region_id=SOURCE,
            backup_id=data_only.backup_id,
            target_region_id=TARGET,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("R1b"), details


@pytest.mark.timeout(120)
def test_r1a_a_backup_of_a_bare_metal_server_is_refused(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    stub = node(coordinated.channel(SOURCE))
    server = make_server(stub, [1], server_type=common_pb2.SERVER_TYPE_BMS)
    bms = backup(stub, server.server_id)
    code, details = refusal(
        lambda: replicate(
            coordinator, source_region_id=SOURCE, backup_id=bms.backup_id, target_region_id=TARGET
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("R1a"), details


@pytest.mark.timeout(120)
def test_unknown_job_is_not_found_and_list_limits_are_checked(
    coordinator: CoordinatorStub,
) -> None:
    code, _ = refusal(
        lambda: coordinator.GetReplicationJob(
            cpb.GetReplicationJobRequest(job_id="no-such-job"), timeout=30
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = refusal(
        lambda: coordinator.ListReplicationJobs(
            cpb.ListReplicationJobsRequest(page_size=1001), timeout=30
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = refusal(
        lambda: coordinator.ListReplicationJobs(
            cpb.ListReplicationJobsRequest(page_token="forged"), timeout=30
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.timeout(120)
def test_a_wall_clock_cluster_cannot_be_advanced_and_unknown_policies_are_not_found(
    coordinated: Cluster, coordinator: CoordinatorStub
) -> None:
    clock = coordinator.GetClock(cpb.GetClockRequest(), timeout=30)
    assert clock.simulated is False
    assert clock.now.seconds > 0
    admin = CoordinatorAdminStub(coordinated.coordinator_channel())
    code, details = refusal(
        lambda: admin.AdvanceClock(cpb.AdvanceClockRequest(by_seconds=60), timeout=30)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "wall clock" in details
    code, _ = refusal(
        lambda: coordinator.GetPolicy(cpb.GetPolicyRequest(policy_id="p"), timeout=30)
    )
    assert code == grpc.StatusCode.NOT_FOUND
