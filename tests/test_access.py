"""Issue 6, credentials: every user call needs an account's API token, the nodes' internal calls
the cluster credential and the operator calls the operator credential; none stands in for
another, a refused call changes nothing, and health and reflection stay open. Also the cluster
secrets file (owner-only, hashes only) and `csbs-cluster` showing new tokens once."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from csbs.auth import bearer
from csbs.credentials import token_hash
from csbs.v1 import common_pb2, coordinator_pb2, region_node_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub, RegionNodeStub
from tests.harness import (
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
    OPERATOR_TOKEN,
    REPO_ROOT,
    Cluster,
    write_cluster_config,
)
from tests.node_helpers import MIB, backup, make_server, node, refusal, seeded_bytes, write

REGION = "cn-north-4"
DEADLINE = 30.0
USER = bearer(ACCOUNT_TOKENS[DEFAULT_ACCOUNT])
OPERATOR = bearer(OPERATOR_TOKEN)
NODE_TABLES = ("servers", "backups", "manifest", "chunks", "images", "replication_records", "holds")


def _methods(descriptor: Any, service: str) -> list[Any]:
    return list(descriptor.services_by_name[service].methods)


INTERNAL_METHODS = _methods(region_node_pb2.DESCRIPTOR, "RegionNodeInternal")
OPERATOR_METHODS = [
    *_methods(region_node_pb2.DESCRIPTOR, "RegionNodeAdmin"),
    *_methods(coordinator_pb2.DESCRIPTOR, "CoordinatorAdmin"),
]
USER_METHODS = [
    *_methods(region_node_pb2.DESCRIPTOR, "RegionNode"),
    *_methods(coordinator_pb2.DESCRIPTOR, "Coordinator"),
]


def call(
    channel: grpc.Channel, method: Any, metadata: list[tuple[str, str]] | None
) -> tuple[grpc.StatusCode, str]:
    """Calls `method` with an empty request (an empty stream for a client stream) and the given
    metadata; returns the status code and details (OK and "" if it answered)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_type = _message_class(method.input_type)
    serialize = request_type.SerializeToString
    kind = (method.client_streaming, method.server_streaming)
    make = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kind]
    stub = make(path, request_serializer=serialize, response_deserializer=lambda raw: raw)
    request: Any = iter([]) if method.client_streaming else request_type()
    try:
        answer = stub(request, timeout=DEADLINE, metadata=metadata)
        if method.server_streaming:
            for _ in answer:
                break
            answer.cancel()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _message_class(descriptor: Any) -> Any:
    """The generated class of any csbs message (every .proto's, quotas and faults too)."""
    return message_factory.GetMessageClass(descriptor)


def _channel_for(cluster: Cluster, method: Any) -> grpc.Channel:
    on_coordinator = method.containing_service.full_name.startswith("csbs.v1.Coordinator")
    # Plain channels: these tests send their own metadata (or none).
    return (
        cluster.coordinator_channel(account=None)
        if on_coordinator
        else cluster.channel(REGION, account=None)
    )


def _catalog_rows(cluster: Cluster, region_id: str) -> dict[str, list[tuple[Any, ...]]]:
    path = cluster.config.region(region_id).data_dir / "catalog.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        return {
            t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in NODE_TABLES
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def seeded(coordinated: Cluster) -> tuple[Cluster, pb.Backup]:
    """The default account's server with data, and an available backup of it."""
    stub = node(coordinated.channel(REGION))
    server = make_server(stub, [2])
    write(stub, server.server_id, 0, 0, seeded_bytes(7, 2 * MIB))
    return coordinated, backup(stub, server.server_id)


# --- each service's credential --------------------------------------------------------------


@pytest.mark.parametrize("method", INTERNAL_METHODS, ids=lambda m: m.name)
def test_internal_calls_need_the_cluster_credential(coordinated: Cluster, method: Any) -> None:
    """No user token, however valid, and not the operator credential, stands in for the
    cluster credential on RegionNodeInternal; no credential at all is UNAUTHENTICATED."""
    channel = _channel_for(coordinated, method)
    for token in (*ACCOUNT_TOKENS.values(), OPERATOR_TOKEN):
        code, details = call(channel, method, [bearer(token)])
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
        assert "cluster credential" in details and method.name in details, details
    code, details = call(channel, method, None)
    assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
    assert "authorization: Bearer" in details, details
    code, _ = call(channel, method, [bearer("csbs_made_up_token_0000000000000")])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # The cluster credential gets past the check (the empty request is then judged itself).
    code, details = call(channel, method, [bearer(coordinated.secrets.cluster_credential)])
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), details


@pytest.mark.parametrize("method", OPERATOR_METHODS, ids=lambda m: m.name)
def test_operator_calls_need_the_operator_credential(coordinated: Cluster, method: Any) -> None:
    channel = _channel_for(coordinated, method)
    for token in (*ACCOUNT_TOKENS.values(), coordinated.secrets.cluster_credential):
        code, details = call(channel, method, [bearer(token)])
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
        assert "operator credential" in details, details
    assert call(channel, method, None)[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = call(channel, method, [OPERATOR])
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), details


@pytest.mark.parametrize("method", USER_METHODS, ids=lambda m: m.name)
def test_user_calls_need_an_account_token(coordinated: Cluster, method: Any) -> None:
    """An account's token and nothing else: no token, an unknown one or another scheme is
    UNAUTHENTICATED; the operator credential acts for no account (PERMISSION_DENIED)."""
    channel = _channel_for(coordinated, method)
    for metadata in (
        None,
        [bearer("csbs_made_up_token_0000000000000")],
        [("authorization", "Basic x")],
    ):
        code, details = call(channel, method, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (metadata, code, details)
    code, details = call(channel, method, [OPERATOR])
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    code, details = call(channel, method, [USER])
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), details


def test_the_coordinator_takes_no_cluster_credential_for_a_user(coordinated: Cluster) -> None:
    """The cluster credential acts for an account only on the nodes (the coordinator's calls);
    on the coordinator's own user service it is refused."""
    stub = CoordinatorStub(coordinated.coordinator_channel(account=None))
    code, _ = refusal(
        lambda: stub.ListReplicationJobs(
            cpb.ListReplicationJobsRequest(),
            timeout=DEADLINE,
            metadata=[
                bearer(coordinated.secrets.cluster_credential),
                ("x-csbs-account", "default"),
            ],
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_are_open(coordinated: Cluster) -> None:
    for channel in (
        coordinated.channel(REGION, account=None),
        coordinated.coordinator_channel(account=None),
    ):
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (listing,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=DEADLINE
        )
        names = {s.name for s in listing.list_services_response.service}
        assert names & {"csbs.v1.RegionNode", "csbs.v1.Coordinator"}
        # And a file descriptor, as grpcurl asks for one.
        (files,) = reflection.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="csbs.v1.RegionNode"
                        if "csbs.v1.RegionNode" in names
                        else "csbs.v1.Coordinator"
                    )
                ]
            ),
            timeout=DEADLINE,
        )
        proto = descriptor_pb2.FileDescriptorProto.FromString(
            files.file_descriptor_response.file_descriptor_proto[0]
        )
        assert proto.package == "csbs.v1"


# --- forging by calling a node directly ---------------------------------------------------------


def test_a_user_cannot_forge_replication_state_on_a_node(
    seeded: tuple[Cluster, pb.Backup],
) -> None:
    """With a valid token, meaningful internal calls (a chunk, a replica with a forged origin,
    a policy's replication record, a hold, the clock) are all refused, and the node's catalog
    is exactly as before."""
    cluster, source = seeded
    internal = RegionNodeInternalStub(cluster.channel(REGION, account=None))
    before = _catalog_rows(cluster, REGION)
    forged_origin = pb.BackupOrigin(
        replicated=True,
        source_region_id="cn-east-3",
        source_backup_id=source.backup_id,
        way=common_pb2.REPLICATION_WAY_POLICY,
        policy_id="forged-policy",
        replication_job_id="forged-job",
    )
    header = pb.CreateReplicaHeader(
        project_id=source.project_id,
        name="forged",
        server_type=common_pb2.SERVER_TYPE_ECS,
        disks=[pb.BackupDisk(disk_index=0, size_bytes=2 * MIB)],
        origin=forged_origin,
        job_id="forged-job",
    )
    calls: dict[str, Callable[[list[tuple[str, str]]], object]] = {
        "WriteChunks": lambda md: internal.WriteChunks(
            iter([pb.ChunkBatch(chunks=[pb.Chunk(hash=b"\0" * 32, data=b"x")])]),
            timeout=DEADLINE,
            metadata=[*md, ("x-csbs-replica-id", source.backup_id)],
        ),
        "CreateReplica": lambda md: internal.CreateReplica(
            iter([pb.CreateReplicaRequest(header=header)]), timeout=DEADLINE, metadata=md
        ),
        "RecordReplication": lambda md: internal.RecordReplication(
            pb.RecordReplicationRequest(
                backup_id=source.backup_id,
                record=pb.ReplicationRecord(
                    target_region_id="cn-east-3",
                    replica_id="forged",
                    way=common_pb2.REPLICATION_WAY_POLICY,
                    policy_id="forged-policy",
                    job_id="forged-job",
                    status=pb.REPLICATION_RECORD_STATUS_SUCCESS,
                ),
            ),
            timeout=DEADLINE,
            metadata=md,
        ),
        "HoldBackup": lambda md: internal.HoldBackup(
            pb.HoldBackupRequest(backup_id=source.backup_id, job_id="forged-job"),
            timeout=DEADLINE,
            metadata=md,
        ),
        "ReadChunks": lambda md: internal.ReadChunks(
            pb.ReadChunksRequest(hashes=[b"\0" * 32]), timeout=DEADLINE, metadata=md
        ),
    }
    for name, make in calls.items():
        for token in ACCOUNT_TOKENS.values():
            code, details = refusal(functools.partial(make, [bearer(token)]))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (name, code, details)
    assert _catalog_rows(cluster, REGION) == before
    shown = node(cluster.channel(REGION)).GetBackup(
        pb.GetBackupRequest(backup_id=source.backup_id), timeout=DEADLINE
    )
    assert list(shown.replications) == [] and not shown.origin.replicated


# --- the secrets file -----------------------------------------------------------------------------


def test_the_secrets_file_is_owner_only_and_holds_only_hashes(coordinated: Cluster) -> None:
    path = coordinated.config.secrets_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for token in (*ACCOUNT_TOKENS.values(), OPERATOR_TOKEN):
        assert token not in text
        assert token_hash(token) in text


def test_a_process_refuses_a_secrets_file_others_can_read(tmp_path: Path) -> None:
    config = write_cluster_config(tmp_path)
    Cluster(config)  # makes the secrets file
    secrets = tmp_path / "data" / "secrets.json"
    os.chmod(secrets, 0o644)
    done = subprocess.run(
        [sys.executable, "-m", "region_node", "--config", str(config), "--region", REGION],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "chmod 600" in done.stderr and "readable by others" in done.stderr


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float = 60.0) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in time:\n{seen}"
        line = process.stdout.readline()
        assert line, f"csbs-cluster ended early:\n{seen}"
        seen += line
    return seen


@pytest.fixture
def tokenless_config(tmp_path: Path) -> Iterator[Path]:
    """A one-region cluster whose config gives no token: they are issued at first start."""
    path = tmp_path / "cluster.toml"
    path.write_text(
        "\n".join(
            [
                "[cluster]",
                f'data_dir = "{tmp_path / "data"}"',
                "[coordinator]",
                'listen = "127.0.0.1:0"',
                "[[accounts]]",
                'id = "default"',
                "[[regions]]",
                'id = "r1"',
                'listen = "127.0.0.1:0"',
                "accepts_replication = true",
                'projects = [{ id = "r1_default", account = "default", main = true }]',
            ]
        )
        + "\n"
    )
    yield path


def _run_cluster(config: Path) -> tuple[str, subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "csbs.cluster", "--config", str(config), "--no-coordinator"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        return _read_until(process, "Ctrl-C stops the cluster."), process
    except BaseException:
        process.kill()
        process.wait()
        raise


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_csbs_cluster_shows_new_tokens_once(tokenless_config: Path) -> None:
    shown, process = _run_cluster(tokenless_config)
    try:
        token = next(
            line.split("=", 1)[1].strip()
            for line in shown.splitlines()
            if line.strip().startswith("export CSBS_TOKEN=")
        )
        assert "operator credential: csbsop_" in shown
        address = next(line.split()[-1] for line in shown.splitlines() if line.startswith("r1 "))
        with grpc.insecure_channel(address) as channel:
            info = RegionNodeStub(channel).GetRegionInfo(
                pb.GetRegionInfoRequest(), timeout=DEADLINE, metadata=[bearer(token)]
            )
        assert [p.project_id for p in info.projects] == ["r1_default"]
    finally:
        _stop(process)
    shown_again, process = _run_cluster(tokenless_config)
    _stop(process)
    assert token not in shown_again
    assert "API token of account" not in shown_again and "export CSBS_" not in shown_again
    assert "were issued at this cluster's first start" in shown_again
