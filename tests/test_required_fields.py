"""Issue 14: an empty request is never looked up as '' and answered NOT_FOUND ("region ''"), nor
does it crash (UNKNOWN, INTERNAL). Every call of every csbs service, on the coordinator and on a
node, is sent its empty request: it either answers, or refuses with a status that says what is
wrong, and an INVALID_ARGUMENT names the field (or the rule) it needs."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from csbs.v1 import coordinator_pb2, faults_pb2, quotas_pb2, region_node_pb2
from tests.harness import Cluster, write_cluster_config

NODE = "cn-north-4"
NEVER = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def _methods() -> Iterator[tuple[str, MethodDescriptor]]:
    for module, process in (
        (coordinator_pb2, "coordinator"),
        (faults_pb2, NODE),
        (region_node_pb2, NODE),
        (quotas_pb2, NODE),
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield process, method


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of its own: some empty requests change settings (capability off, say)."""
    with Cluster(write_cluster_config(tmp_path_factory.mktemp("required"))) as running:
        running.start(coordinator=True)
        yield running


def _field_names(message: Descriptor, depth: int = 2) -> set[str]:
    """The names of a message's fields and of its message fields' fields."""
    names = {f.name for f in message.fields}
    if depth > 1:
        for f in message.fields:
            if f.message_type is not None:
                names |= _field_names(f.message_type, depth - 1)
    return names


def _refusal(channel: grpc.Channel, method: MethodDescriptor) -> grpc.RpcError | None:
    request = message_factory.GetMessageClass(method.input_type)()
    answer = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    call = kind(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=answer.FromString,
    )
    try:
        # A stream of requests: one empty message.
        result = call(iter([request]) if method.client_streaming else request, timeout=10)
        if method.server_streaming:
            next(iter(result), None)
    except grpc.RpcError as refused:
        return refused
    return None


def test_every_empty_request_answers_or_names_what_it_needs(cluster: Cluster) -> None:
    seen = []
    for process, method in _methods():
        channel = (
            cluster.coordinator_channel() if process == "coordinator" else cluster.channel(process)
        )
        refused = _refusal(channel, method)
        if refused is None:
            continue
        code, details = refused.code(), refused.details() or ""
        seen.append(method.name)
        assert code not in NEVER, (method.full_name, code, details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            fields = _field_names(method.input_type)
            named = set(re.findall(r"[a-z_]+", details)) & fields
            # A field, a rule (P1: …), or the metadata a stream of chunks must carry.
            assert named or re.match(r"P\d:", details) or "metadata '" in details, (
                method.full_name,
                details,
            )
    # The calls that cannot do without an ID were among the refused (the loop really ran).
    assert {
        "GetBackup",
        "CreateImage",
        "ReplicateBackup",
        "ListReplicationTargets",
        "WriteDisk",
        "CreatePolicyBackup",
    } <= set(seen)
