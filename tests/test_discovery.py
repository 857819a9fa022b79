"""Issue 14, discovery: a client that knows only the coordinator's address and a token can do the
whole story. `Coordinator.ListRegions` is the catalog of regional endpoints (every region, its
capability R5, the caller's projects there with main marked P3, its node's address and TLS
flag), and reflection v1 (beside v1alpha) describes every service well enough that a client
with no generated code builds its messages from the descriptors alone."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from csbs.auth import with_metadata
from csbs.client import Client
from csbs.rpc import open_channel
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import server_reflection_v1_pb2 as v1
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeStub
from csbs.v1.server_reflection_v1_pb2_grpc import ServerReflectionStub
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, SECOND_ACCOUNT, Cluster
from tests.node_helpers import (
    MIB,
    backup,
    disk_sha256,
    make_server,
    seeded_bytes,
    server_from_backup,
    write,
)
from tests.replication_helpers import replicated
from tests.test_cli import _clean_env, csbs, csbs_json

SOURCE, TARGET, NO_REPLICATION = "cn-north-4", "cn-east-3", "cn-south-1"


def _reflect(channel: grpc.Channel, requests: Iterable[v1.ServerReflectionRequest]) -> list[Any]:
    return list(ServerReflectionStub(channel).ServerReflectionInfo(iter(requests), timeout=10))


def _pool_from_reflection(channel: grpc.Channel, symbol: str) -> descriptor_pool.DescriptorPool:
    """A descriptor pool built from what reflection v1 answers alone: the file defining
    `symbol` and every file it imports, asked for by name."""
    pool = descriptor_pool.DescriptorPool()
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    (answer,) = _reflect(channel, [v1.ServerReflectionRequest(file_containing_symbol=symbol)])
    pending = list(answer.file_descriptor_response.file_descriptor_proto)
    while pending:
        proto = descriptor_pb2.FileDescriptorProto.FromString(pending.pop())
        if proto.name in files:
            continue
        files[proto.name] = proto
        for dependency in proto.dependency:
            if dependency not in files:
                (more,) = _reflect(
                    channel, [v1.ServerReflectionRequest(file_by_filename=dependency)]
                )
                assert not more.HasField("error_response"), more.error_response
                pending.extend(more.file_descriptor_response.file_descriptor_proto)

    def add(name: str) -> None:  # dependencies first
        for dependency in files[name].dependency:
            add(dependency)
        if name not in added:
            pool.Add(files[name])
            added.add(name)

    added: set[str] = set()
    for name in files:
        add(name)
    return pool


def _all_answering(list_regions: Callable[[], Any]) -> Any:
    """ListRegions once every region answered within the coordinator's short deadline (a cold
    channel on a busy machine may miss it once): bounded."""
    deadline = time.monotonic() + 20
    while True:
        answer = list_regions()
        if not any(r.unreachable for r in answer.regions) or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_reflection_v1_lists_every_service_of_the_coordinator_and_of_a_node(
    coordinated: Cluster,
) -> None:
    for channel, service in (
        (coordinated.coordinator_channel(None), "csbs.v1.Coordinator"),
        (coordinated.channel(SOURCE, None), "csbs.v1.RegionNode"),
    ):
        (answer,) = _reflect(channel, [v1.ServerReflectionRequest(list_services="")])
        names = {s.name for s in answer.list_services_response.service}
        assert {
            service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        (unknown,) = _reflect(channel, [v1.ServerReflectionRequest(file_containing_symbol="no.X")])
        assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_client_built_from_reflection_v1_alone_lists_every_region_with_its_node_address(
    coordinated: Cluster,
) -> None:
    """No generated code: the request and answer classes come from the descriptors reflection
    v1 gave; the answer names every node where it really listens."""
    plain = coordinated.coordinator_channel(None)
    pool = _pool_from_reflection(plain, "csbs.v1.Coordinator")
    method = pool.FindServiceByName("csbs.v1.Coordinator").methods_by_name["ListRegions"]
    request_class = message_factory.GetMessageClass(method.input_type)
    answer_class = message_factory.GetMessageClass(method.output_type)
    call = plain.unary_unary(
        "/csbs.v1.Coordinator/ListRegions",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=answer_class.FromString,
    )
    token = ACCOUNT_TOKENS[DEFAULT_ACCOUNT]
    answer = _all_answering(
        lambda: call(request_class(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
    )
    regions = {r.region_id: r for r in answer.regions}
    assert list(regions) == coordinated.region_ids  # the cluster's order
    for region_id, region in regions.items():
        assert region.node_address == coordinated.node(region_id).address
        assert not region.tls and not region.unreachable
        assert [p.project_id for p in region.projects if p.main] == [f"{region_id}_default"]
        assert {p.account_id for p in region.projects} == {DEFAULT_ACCOUNT}
    assert regions[SOURCE].accepts_replication and regions[TARGET].accepts_replication
    assert not regions[NO_REPLICATION].accepts_replication  # R5, as the region says
    assert regions[TARGET].display_name == "CN East-Shanghai1"
    assert {p.project_id for p in regions[TARGET].projects} == {"cn-east-3_default", "cn-east-3_dr"}


def test_knowing_only_the_coordinator_a_client_replicates_and_boots_a_byte_identical_server(
    coordinated: Cluster,
) -> None:
    """The seed's story with the nodes reached only at the addresses ListRegions gave."""
    token = [("authorization", f"Bearer {ACCOUNT_TOKENS[DEFAULT_ACCOUNT]}")]
    coordinator = CoordinatorStub(coordinated.coordinator_channel())
    listed = coordinator.ListRegions(cpb.ListRegionsRequest(), timeout=10).regions
    opened = {r.region_id: open_channel(r.node_address, None) for r in listed}
    try:
        nodes = {
            region_id: RegionNodeStub(with_metadata(channel, lambda _method: token))
            for region_id, channel in opened.items()
        }
        source = make_server(nodes[SOURCE], [8], name="found-by-catalog")
        write(nodes[SOURCE], source.server_id, 0, 3 * MIB + 17, seeded_bytes(14, 2 * MIB))
        taken = backup(nodes[SOURCE], source.server_id)
        job = replicated(coordinator, taken.backup_id, SOURCE, TARGET)
        booted = server_from_backup(nodes[TARGET], job.replica_id)
        assert disk_sha256(nodes[TARGET], booted.server_id, 0) == disk_sha256(
            nodes[SOURCE], source.server_id, 0
        )
    finally:
        for channel in opened.values():
            channel.close()


def test_each_account_sees_only_its_own_projects_in_the_catalog(coordinated: Cluster) -> None:
    answer = _all_answering(
        lambda: CoordinatorStub(coordinated.coordinator_channel(SECOND_ACCOUNT)).ListRegions(
            cpb.ListRegionsRequest(), timeout=10
        )
    )
    assert [r.region_id for r in answer.regions] == coordinated.region_ids
    for region in answer.regions:
        assert [(p.project_id, p.main) for p in region.projects] == [
            (f"{region.region_id}_acme", True)
        ]
    try:
        CoordinatorStub(coordinated.coordinator_channel(None)).ListRegions(
            cpb.ListRegionsRequest(), timeout=10
        )
    except grpc.RpcError as refused:
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    else:
        raise AssertionError("ListRegions answered a call with no token")


def test_csbs_given_only_the_coordinator_finds_every_region_in_its_catalog(
    coordinated: Cluster, tmp_path: Path
) -> None:
    """No config, no --address: `csbs --coordinator` reaches the nodes at the listed addresses."""
    env = _clean_env(CSBS_TOKEN=ACCOUNT_TOKENS[DEFAULT_ACCOUNT])
    where = ("--coordinator", coordinated.coordinator.address)
    regions = csbs_json(env, *where, "region", "list")
    assert [r["region_id"] for r in regions] == coordinated.region_ids
    made = csbs_json(env, *where, "--region", TARGET, "server", "create", "--disk", "8MiB")
    listed = csbs_json(env, *where, "--region", TARGET, "server", "list")
    assert made["server_id"] in {s["server_id"] for s in listed}
    refused = csbs(_clean_env(), *where, "region", "list", code=1)
    assert "token" in refused.stderr.lower(), refused.stderr


def test_the_public_client_given_only_the_coordinator_reaches_every_region(
    coordinated: Cluster,
) -> None:
    with Client(
        coordinator=coordinated.coordinator.address, token=ACCOUNT_TOKENS[DEFAULT_ACCOUNT]
    ) as client:
        assert client.region_ids == coordinated.region_ids
        server = client.create_server(TARGET, [4 * MIB], name="public-client")
        assert client.region(TARGET).get_server("", server.server_id).name == "public-client"
    # Without a request ID of its own, each call of the client got one of its own.
    creates = _logged(coordinated.node(TARGET).log_path, "RegionNode/CreateServer OK")
    gets = _logged(coordinated.node(TARGET).log_path, "RegionNode/GetServer OK")
    assert creates and gets and not set(creates) & set(gets)


def _logged(path: Path, message: str) -> list[str]:
    """The request IDs of a process's log lines that hold `message`."""
    lines = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return [str(e["request_id"]) for e in lines if message in str(e["message"])]


def test_every_call_of_one_csbs_command_carries_one_request_id(coordinated: Cluster) -> None:
    """CSBS_REQUEST_ID (else a new ID per command) goes with every call the command makes: one
    grep over the logs finds the coordinator's catalog call and the node's list alike."""
    request_id = f"cli-{uuid.uuid4().hex[:12]}"
    env = _clean_env(CSBS_TOKEN=ACCOUNT_TOKENS[DEFAULT_ACCOUNT], CSBS_REQUEST_ID=request_id)
    csbs_json(
        env, "--coordinator", coordinated.coordinator.address, "--region", TARGET, "server", "list"
    )

    def logged(path: Path) -> list[str]:
        lines = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
        return [str(e["message"]) for e in lines if e["request_id"] == request_id]

    assert any("Coordinator/ListRegions OK" in m for m in logged(coordinated.coordinator.log_path))
    assert any("RegionNode/ListServers OK" in m for m in logged(coordinated.node(TARGET).log_path))
