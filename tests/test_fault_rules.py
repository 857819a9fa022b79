"""Fault rules (issue 13) through real processes: a rule on a region node or on the coordinator
fails or delays the calls it matches (by name or glob, for a count, with a seeded probability),
is listed with its counters and cleared; bad rules are INVALID_ARGUMENT naming the field; only
the operator may add them; FaultInjection, health and reflection are never affected; and the
rules of the cluster config act from the start."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from csbs.auth import bearer
from csbs.config import ConfigError, load_cluster_config
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, Cluster, write_cluster_config
from tests.node_helpers import MIB, backup, make_server, node, refusal, seeded_bytes, write

REGION = "cn-east-3"
OTHER = "cn-north-4"
DEADLINE = 10.0
GET_INFO = "/csbs.v1.RegionNode/GetRegionInfo"
CREATE_IMAGE = "/csbs.v1.RegionNode/CreateImage"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(write_cluster_config(tmp_path_factory.mktemp("faults"))) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture(autouse=True)
def no_rules_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test of the shared cluster starts and ends with no rule on any process."""
    yield
    if "cluster" in request.fixturenames:
        running: Cluster = request.getfixturevalue("cluster")
        for stub in (faults(running, REGION), faults(running, OTHER), coordinator_faults(running)):
            stub.ClearFaultRules(fpb.ClearFaultRulesRequest(), timeout=DEADLINE)


def faults(cluster: Cluster, region_id: str) -> FaultInjectionStub:
    return FaultInjectionStub(cluster.channel(region_id))


def coordinator_faults(cluster: Cluster) -> FaultInjectionStub:
    return FaultInjectionStub(cluster.coordinator_channel())


def add(stub: FaultInjectionStub, **fields: Any) -> fpb.FaultRule:
    rule: fpb.FaultRule = stub.AddFaultRule(fpb.FaultRule(**fields), timeout=DEADLINE)
    return rule


def rules(stub: FaultInjectionStub) -> list[fpb.FaultRule]:
    return list(stub.ListFaultRules(fpb.ListFaultRulesRequest(), timeout=DEADLINE).rules)


def region_info_fails(cluster: Cluster, region_id: str = REGION) -> bool:
    """Calls GetRegionInfo once: whether it failed (UNAVAILABLE, as the rules here say)."""
    try:
        node(cluster.channel(region_id)).GetRegionInfo(pb.GetRegionInfoRequest(), timeout=DEADLINE)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return True
    return False


# --- rules that act ------------------------------------------------------------------------------


def test_the_next_two_create_image_calls_fail_unavailable_then_the_rule_is_spent(
    cluster: Cluster,
) -> None:
    stub = node(cluster.channel(REGION))
    server = make_server(stub, [1])
    write(stub, server.server_id, 0, 0, seeded_bytes(3, MIB))
    source = backup(stub, server.server_id)
    rule = add(faults(cluster, REGION), method=CREATE_IMAGE, code="UNAVAILABLE", count=2)
    assert rule.rule_id and rule.process == REGION and rule.remaining == 2
    assert rule.code == "UNAVAILABLE" and rule.probability == 1.0

    def create_image() -> pb.Image:
        image: pb.Image = stub.CreateImage(
            pb.CreateImageRequest(backup_id=source.backup_id), timeout=DEADLINE
        )
        return image

    for attempt in (1, 2):
        code, details = refusal(create_image)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "injected fault" in details and rule.rule_id in details, details
        if attempt == 1:
            (listed,) = rules(faults(cluster, REGION))
            assert (listed.calls_matched, listed.calls_failed, listed.remaining) == (1, 1, 1)
    assert create_image().backup_id == source.backup_id  # the third call goes through
    assert rules(faults(cluster, REGION)) == []


def test_a_seeded_probability_rule_fails_the_same_calls_in_two_runs(cluster: Cluster) -> None:
    calls, seed, probability = 24, 20261128, 0.5
    runs = []
    for _ in range(2):
        rule = add(
            faults(cluster, REGION),
            method=GET_INFO,
            code="UNAVAILABLE",
            probability=probability,
            seed=seed,
        )
        runs.append([region_info_fails(cluster) for _ in range(calls)])
        (listed,) = rules(faults(cluster, REGION))
        assert listed.calls_matched == calls and listed.calls_failed == sum(runs[-1])
        faults(cluster, REGION).ClearFaultRules(
            fpb.ClearFaultRulesRequest(rule_id=rule.rule_id), timeout=DEADLINE
        )
    # One draw per matching call from random.Random(seed): the same calls fail every run.
    draws = random.Random(seed)
    assert runs[0] == runs[1] == [draws.random() < probability for _ in range(calls)]
    assert 0 < sum(runs[0]) < calls


def test_a_delay_only_rule_delays_the_calls_it_counts_and_fails_none(cluster: Cluster) -> None:
    rule = add(faults(cluster, REGION), method="*/GetRegionInfo", delay_ms=400, count=2)
    assert rule.code == "" and rule.remaining == 2
    took = []
    for _ in range(3):
        started = time.monotonic()
        assert not region_info_fails(cluster)
        took.append(time.monotonic() - started)
    # Lower bounds only: the machine is shared and noisy.
    assert took[0] >= 0.4 and took[1] >= 0.4, took
    assert rules(faults(cluster, REGION)) == []  # spent after two delayed calls


def test_glob_rules_match_every_method_they_name_and_only_those(cluster: Cluster) -> None:
    rule = add(
        faults(cluster, REGION),
        method="/csbs.v1.RegionNode/*",
        code="FAILED_PRECONDITION",
        message="rehearsal: the user API of cn-east-3 refuses",
    )
    stub = node(cluster.channel(REGION))
    for call in (
        lambda: stub.GetRegionInfo(pb.GetRegionInfoRequest(), timeout=DEADLINE),
        lambda: stub.ListServers(pb.ListServersRequest(), timeout=DEADLINE),
        lambda: stub.ReadDisk(pb.ReadDiskRequest(server_id="nothing"), timeout=DEADLINE),
    ):
        assert refusal(call) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "rehearsal: the user API of cn-east-3 refuses",
        )
    # Another service of the same process, and the same method in another region, are untouched.
    RegionNodeInternalStub(cluster.channel(REGION)).ListDeletedReplicas(
        pb.ListDeletedReplicasRequest(), timeout=DEADLINE
    )
    assert not region_info_fails(cluster, OTHER)
    (listed,) = rules(faults(cluster, REGION))
    assert listed.rule_id == rule.rule_id and listed.calls_failed == 3 == listed.calls_matched

    # A dotted glob and a dotted full name are answered in the /package.Service/Method form.
    dotted = add(faults(cluster, OTHER), method="*.GetRegionInfo", code="UNAVAILABLE", count=1)
    assert dotted.method == "/*/GetRegionInfo"
    full = add(faults(cluster, OTHER), method="csbs.v1.RegionNode.ListServers", delay_ms=1)
    assert full.method == "/csbs.v1.RegionNode/ListServers"
    assert region_info_fails(cluster, OTHER) and not region_info_fails(cluster, OTHER)


def test_a_rule_on_the_coordinator_fails_replicate_backup_with_its_code_and_message(
    cluster: Cluster,
) -> None:
    add(
        coordinator_faults(cluster),
        method="/csbs.v1.Coordinator/ReplicateBackup",
        code="RESOURCE_EXHAUSTED",
        message="rehearsal: replication quota hit",
        count=1,
    )
    stub = CoordinatorStub(cluster.coordinator_channel())

    def replicate() -> cpb.ReplicationJob:
        job: cpb.ReplicationJob = stub.ReplicateBackup(
            cpb.ReplicateBackupRequest(
                source_region_id=OTHER, backup_id="no-such-backup", target_region_id=REGION
            ),
            timeout=DEADLINE,
        )
        return job

    assert refusal(replicate) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "rehearsal: replication quota hit",
    )
    # Spent: the next call reaches the coordinator, which looks for the backup.
    assert refusal(replicate)[0] == grpc.StatusCode.NOT_FOUND
    assert rules(coordinator_faults(cluster)) == []


def test_rules_are_listed_in_order_and_cleared_one_or_all(cluster: Cluster) -> None:
    stub = faults(cluster, REGION)
    added = [
        add(stub, method=GET_INFO, code="UNAVAILABLE", count=5),
        add(stub, method="*/ListServers", delay_ms=10),
        add(stub, method="/csbs.v1.RegionNodeInternal/*", code="ABORTED", probability=0.25),
    ]
    assert [r.rule_id for r in rules(stub)] == [r.rule_id for r in added]
    assert len({r.rule_id for r in added}) == 3
    cleared = stub.ClearFaultRules(
        fpb.ClearFaultRulesRequest(rule_id=added[1].rule_id), timeout=DEADLINE
    )
    assert cleared.cleared == 1
    assert [r.rule_id for r in rules(stub)] == [added[0].rule_id, added[2].rule_id]
    code, details = refusal(
        lambda: stub.ClearFaultRules(
            fpb.ClearFaultRulesRequest(rule_id=added[1].rule_id), timeout=DEADLINE
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and added[1].rule_id in details
    assert stub.ClearFaultRules(fpb.ClearFaultRulesRequest(), timeout=DEADLINE).cleared == 2
    assert rules(stub) == []


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"method": "", "code": "UNAVAILABLE"}, "method"),
        ({"method": "/csbs.v1.RegionNode/NoSuchCall", "code": "UNAVAILABLE"}, "method"),
        ({"method": "/csbs.v1.Coordinator/ReplicateBackup", "code": "UNAVAILABLE"}, "method"),
        ({"method": "/csbs.v1.FaultInjection/ListFaultRules", "code": "INTERNAL"}, "method"),
        ({"method": "/grpc.health.v1.Health/Check", "code": "INTERNAL"}, "method"),
        ({"method": "*/" + "x" * 300, "code": "UNAVAILABLE"}, "method"),
        ({"method": GET_INFO, "code": "NOT_A_CODE"}, "code"),
        ({"method": GET_INFO, "code": "UNAVAILABLE", "probability": 0.0}, "probability"),
        ({"method": GET_INFO, "code": "UNAVAILABLE", "probability": 1.5}, "probability"),
        ({"method": GET_INFO, "code": "UNAVAILABLE", "probability": -0.1}, "probability"),
        ({"method": GET_INFO, "code": "UNAVAILABLE", "delay_ms": 60_001}, "delay_ms"),
        ({"method": GET_INFO}, "delay_ms"),
        ({"method": GET_INFO, "code": "OK"}, "delay_ms"),
        ({"method": GET_INFO, "message": "no code", "delay_ms": 5}, "message"),
        ({"method": GET_INFO, "code": "UNAVAILABLE", "message": "m" * 1025}, "message"),
    ],
)
def test_a_bad_rule_is_invalid_argument_naming_the_field(
    cluster: Cluster, fields: dict[str, Any], field: str
) -> None:
    stub = faults(cluster, REGION)
    code, details = refusal(lambda: add(stub, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}:"), details
    assert rules(stub) == []


def add_with(stub: FaultInjectionStub, metadata: list[tuple[str, str]] | None) -> fpb.FaultRule:
    """AddFaultRule with the given credential (None: with none)."""
    request = fpb.FaultRule(method=GET_INFO, code="UNAVAILABLE")
    rule: fpb.FaultRule = stub.AddFaultRule(request, metadata=metadata, timeout=DEADLINE)
    return rule


def test_only_the_operator_credential_manages_fault_rules(cluster: Cluster) -> None:
    user = [bearer(ACCOUNT_TOKENS[DEFAULT_ACCOUNT])]
    cluster_credential = [bearer(cluster.secrets.cluster_credential)]
    for channel in (cluster.channel(REGION, account=None), cluster.coordinator_channel(None)):
        stub = FaultInjectionStub(channel)
        for metadata in (user, cluster_credential):
            code, details = refusal(partial(add_with, stub, metadata))
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "FaultInjection.AddFaultRule needs" in details
        assert refusal(partial(add_with, stub, None))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert rules(faults(cluster, REGION)) == [] and rules(coordinator_faults(cluster)) == []


def test_a_call_refused_for_its_credential_is_refused_as_ever_and_not_counted(
    cluster: Cluster,
) -> None:
    add(faults(cluster, REGION), method=GET_INFO, code="UNAVAILABLE")
    code, _ = refusal(
        lambda: node(cluster.channel(REGION, account=None)).GetRegionInfo(
            pb.GetRegionInfoRequest(), timeout=DEADLINE
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    (listed,) = rules(faults(cluster, REGION))
    assert listed.calls_matched == 0


def test_a_rule_on_every_method_leaves_fault_injection_health_and_reflection_up(
    cluster: Cluster,
) -> None:
    for stub, channel in (
        (faults(cluster, REGION), cluster.channel(REGION, account=None)),
        (coordinator_faults(cluster), cluster.coordinator_channel(account=None)),
    ):
        add(stub, method="*", code="UNAVAILABLE")
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (listing,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=DEADLINE
        )
        assert "csbs.v1.FaultInjection" in {s.name for s in listing.list_services_response.service}
        assert len(rules(stub)) == 1
    assert region_info_fails(cluster)
    code, _ = refusal(
        lambda: CoordinatorStub(cluster.coordinator_channel()).GetClock(
            cpb.GetClockRequest(), timeout=DEADLINE
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    # Cleared through the very service the rule could not touch: everything answers again.
    assert faults(cluster, REGION).ClearFaultRules(fpb.ClearFaultRulesRequest()).cleared == 1
    assert not region_info_fails(cluster)


# --- the cluster config ---------------------------------------------------------------------------


def test_rules_of_the_config_act_from_the_start(tmp_path: Path) -> None:
    config = write_cluster_config(
        tmp_path,
        faults={
            "rules": [
                {
                    "process": REGION,
                    "method": GET_INFO,
                    "code": "UNAVAILABLE",
                    "message": "from the config",
                    "count": 1,
                },
                {"process": "coordinator", "method": "*/GetClock", "code": "INTERNAL"},
            ]
        },
    )
    with Cluster(config) as running:
        running.start(coordinator=True)
        (held,) = rules(faults(running, REGION))
        assert (held.method, held.message, held.remaining) == (GET_INFO, "from the config", 1)
        assert rules(faults(running, OTHER)) == []
        assert refusal(
            lambda: node(running.channel(REGION)).GetRegionInfo(
                pb.GetRegionInfoRequest(), timeout=DEADLINE
            )
        ) == (grpc.StatusCode.UNAVAILABLE, "from the config")
        assert not region_info_fails(running)
        code, details = refusal(
            lambda: CoordinatorStub(running.coordinator_channel()).GetClock(
                cpb.GetClockRequest(), timeout=DEADLINE
            )
        )
        assert code == grpc.StatusCode.INTERNAL and "injected fault" in details
        # A restart forgets the rules added since, and the config's act again.
        add(faults(running, REGION), method="*/ListServers", delay_ms=5)
        running.node(REGION).restart()
        (again,) = rules(faults(running, REGION))
        assert again.method == GET_INFO and again.remaining == 1


@pytest.mark.parametrize(
    ("faults_section", "key"),
    [
        ({"rules": [{"process": "mars-1", "method": GET_INFO, "code": "INTERNAL"}]}, "process"),
        ({"rules": [{"method": GET_INFO, "code": "INTERNAL"}]}, "'process'"),
        ({"rules": [{"process": REGION, "method": GET_INFO, "code": "NOPE"}]}, "code"),
        ({"rules": [{"process": REGION, "method": "", "code": "INTERNAL"}]}, "method"),
        (
            {"rules": [{"process": "coordinator", "method": GET_INFO, "code": "INTERNAL"}]},
            "method",
        ),
        (
            {"rules": [{"process": REGION, "method": GET_INFO, "code": "X", "probability": 2}]},
            "code",
        ),
        ({"rules": [{"process": REGION, "method": GET_INFO, "probability": 2}]}, "probability"),
        ({"rules": [{"process": REGION, "method": GET_INFO, "count": "2"}]}, "count"),
        ({"rules": [{"process": REGION, "method": GET_INFO, "delay": 5}]}, "delay"),
        ({"outages": ["mars-1"]}, "outages"),
        ({"outages": "cn-east-3"}, "outages"),
    ],
)
def test_a_bad_faults_section_is_a_config_error_naming_the_key(
    tmp_path: Path, faults_section: dict[str, Any], key: str
) -> None:
    path = write_cluster_config(tmp_path, faults=faults_section)
    with pytest.raises(ConfigError) as refused:
        load_cluster_config(path)
    assert "faults." in str(refused.value) and key in str(refused.value), refused.value


def test_a_faults_section_gives_each_process_its_rules(tmp_path: Path) -> None:
    path = write_cluster_config(
        tmp_path,
        faults={
            "outages": [REGION],
            "rules": [
                {"process": REGION, "method": "csbs.v1.RegionNode.CreateImage", "code": "aborted"},
                {"process": "coordinator", "method": "*", "delay_ms": 5, "probability": 0.5},
            ],
        },
    )
    faults_config = load_cluster_config(path).faults
    assert faults_config.outages == (REGION,)
    (rule,) = faults_config.rules_for(REGION)
    assert (rule.method, rule.code) == (CREATE_IMAGE, "ABORTED")
    (coordinator_rule,) = faults_config.rules_for("coordinator")
    assert (coordinator_rule.delay_ms, coordinator_rule.probability) == (5, 0.5)
    assert faults_config.rules_for(OTHER) == ()
