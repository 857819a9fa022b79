"""Builds the coordinator's gRPC server: its service, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health

from coordinator.config import CoordinatorConfig
from coordinator.replication import ReplicationService
from coordinator.servicer import CoordinatorServicer
from csbs.clients import STALL_TIMEOUT, RegionNodes
from csbs.clock import Clock
from csbs.rpc import add_health_and_reflection, bind, new_server
from csbs.v1 import coordinator_pb2, coordinator_pb2_grpc

# CoordinatorAdmin (AdvanceClock) comes with the simulated clock, in a later issue.
SERVICE_NAMES = [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name]


def build_server(
    config: CoordinatorConfig, clock: Clock
) -> tuple[grpc.Server, str, ReplicationService, health.HealthServicer]:
    """The server, bound (not started), with the address it got and its domain service (which
    has resumed its unfinished jobs)."""
    # A stream that stalls is cut well within the retry budget, so that it can be tried again.
    stall = max(min(STALL_TIMEOUT, config.retry_budget_seconds / 2), 5.0)
    nodes = RegionNodes(config.regions, stall_timeout=stall)
    service = ReplicationService(config, clock, nodes)
    server = new_server()
    # The policy calls (a later issue) are left to the generated base class, which answers
    # UNIMPLEMENTED; its stubs declare them abstract.
    servicer = CoordinatorServicer(service, clock)  # type: ignore[abstract]
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)
    address = bind(server, config.listen)
    return server, address, service, health_servicer
