"""Builds the region node's gRPC server: its services, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from csbs.auth import AuthInterceptor
from csbs.clock import Clock
from csbs.credentials import ClusterSecrets, Role
from csbs.fault_servicer import add_fault_injection
from csbs.faults import FAULT_INJECTION_SERVICE, FaultInterceptor, FaultRules, methods_of
from csbs.metrics import ProcessMetrics
from csbs.observed_calls import ObservedCalls
from csbs.rpc import add_health_and_reflection, bind, new_server
from csbs.tally import NODE_COUNTS
from csbs.tls import ProcessTls
from csbs.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.config import NodeConfig
from region_node.models import RegionOutage
from region_node.node import RegionNode
from region_node.outage_gate import OutageGate
from region_node.servicer import (
    RegionNodeAdminServicer,
    RegionNodeInternalServicer,
    RegionNodeServicer,
)

# What each service's calls need: users, the coordinator alone, the operator.
REQUIRED_ROLES = {
    **{
        region_node_pb2.DESCRIPTOR.services_by_name[name].full_name: role
        for name, role in (
            ("RegionNode", Role.USER),
            ("RegionNodeInternal", Role.CLUSTER),
            ("RegionNodeAdmin", Role.OPERATOR),
        )
    },
    FAULT_INJECTION_SERVICE: Role.OPERATOR,
}
SERVICE_NAMES = list(REQUIRED_ROLES)
# What a region outage takes down (issue 13); the admin service stays up to bring it back.
OUTAGE_SERVICES = [
    region_node_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("RegionNode", "RegionNodeInternal")
]


def build_server(
    config: NodeConfig,
    clock: Clock,
    secrets: ClusterSecrets,
    tls: ProcessTls | None = None,
    metrics: ProcessMetrics | None = None,
) -> tuple[grpc.Server, str, RegionNode, health.HealthServicer]:
    """The server, bound (not started), with the address it got and the node it serves;
    `metrics` count its calls and show its node (issue 14)."""
    metrics = metrics or ProcessMetrics()
    faults = FaultRules(
        config.region_id, methods_of(region_node_pb2.DESCRIPTOR), config.fault_rules
    )
    node = RegionNode(config, clock).start()
    metrics.count(node.parts.tally, NODE_COUNTS)
    metrics.read(node.figures)
    # An outage and fault rules act after the credential is checked (issue 13); every call
    # is observed, those they refuse too (issue 14).
    server = new_server(
        interceptors=[
            ObservedCalls(metrics),
            AuthInterceptor(secrets, REQUIRED_ROLES, coordinator_acts=True),
            OutageGate(node.outage, OUTAGE_SERVICES),
            FaultInterceptor(faults),
        ]
    )
    region_node_pb2_grpc.add_RegionNodeServicer_to_server(RegionNodeServicer(node), server)
    region_node_pb2_grpc.add_RegionNodeInternalServicer_to_server(
        RegionNodeInternalServicer(node), server
    )
    region_node_pb2_grpc.add_RegionNodeAdminServicer_to_server(
        RegionNodeAdminServicer(node), server
    )
    add_fault_injection(server, faults)
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)

    def show_health(outage: RegionOutage) -> None:
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if outage.out
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in (*OUTAGE_SERVICES, ""):
            health_servicer.set(name, status)

    node.outage.on_change(show_health)
    show_health(node.outage.state)
    address = bind(server, config.listen, tls)
    return server, address, node, health_servicer
