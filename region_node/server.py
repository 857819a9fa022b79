"""Builds the region node's gRPC server: its services, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health

from csbs.clock import Clock
from csbs.rpc import add_health_and_reflection, bind, new_server
from csbs.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.config import NodeConfig
from region_node.service import RegionNodeService
from region_node.servicer import (
    RegionNodeAdminServicer,
    RegionNodeInternalServicer,
    RegionNodeServicer,
)

SERVICE_NAMES = [
    region_node_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("RegionNode", "RegionNodeInternal", "RegionNodeAdmin")
]


def build_server(
    config: NodeConfig, clock: Clock
) -> tuple[grpc.Server, str, RegionNodeService, health.HealthServicer]:
    """The server, bound (not started), with the address it got and its domain service."""
    service = RegionNodeService(config, clock)
    server = new_server()
    region_node_pb2_grpc.add_RegionNodeServicer_to_server(RegionNodeServicer(service), server)
    region_node_pb2_grpc.add_RegionNodeInternalServicer_to_server(
        RegionNodeInternalServicer(service), server
    )
    region_node_pb2_grpc.add_RegionNodeAdminServicer_to_server(
        RegionNodeAdminServicer(service), server
    )
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)
    address = bind(server, config.listen)
    return server, address, service, health_servicer
