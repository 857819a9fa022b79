"""Builds the coordinator's gRPC server: its services, health and reflection."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from coordinator.cluster_clock import ClusterClock
from coordinator.config import CoordinatorConfig
from coordinator.figures import coordinator_figures
from coordinator.policies import PolicyService
from coordinator.recovery_points import RecoveryPoints
from coordinator.replication import ReplicationService
from coordinator.servicer import CoordinatorAdminServicer, CoordinatorServicer
from coordinator.store import Store
from csbs.auth import AuthInterceptor
from csbs.clients import STALL_TIMEOUT, RegionNodes
from csbs.credentials import Role
from csbs.fault_servicer import add_fault_injection
from csbs.faults import (
    COORDINATOR_PROCESS,
    FAULT_INJECTION_SERVICE,
    FaultInterceptor,
    FaultRules,
    methods_of,
)
from csbs.metrics import ProcessMetrics
from csbs.observed_calls import ObservedCalls
from csbs.rpc import add_health_and_reflection, bind, new_server
from csbs.tally import COORDINATOR_COUNTS, Tally
from csbs.v1 import coordinator_pb2, coordinator_pb2_grpc

REQUIRED_ROLES = {
    **{
        coordinator_pb2.DESCRIPTOR.services_by_name[name].full_name: role
        for name, role in (("Coordinator", Role.USER), ("CoordinatorAdmin", Role.OPERATOR))
    },
    FAULT_INJECTION_SERVICE: Role.OPERATOR,
}
SERVICE_NAMES = list(REQUIRED_ROLES)


@dataclass
class Coordinator:
    """The coordinator's domain, assembled: stopped in the reverse order of its making."""

    store: Store
    nodes: RegionNodes
    clock: ClusterClock
    replication: ReplicationService
    policies: PolicyService

    def close(self) -> None:
        self.policies.close()
        self.replication.close()
        self.store.close()
        self.nodes.close()


def build_server(
    config: CoordinatorConfig, metrics: ProcessMetrics | None = None
) -> tuple[grpc.Server, str, Coordinator, health.HealthServicer]:
    """The server, bound (not started), with the address it got and its domain (which has
    resumed its unfinished jobs); `metrics` count its calls and show its jobs (issue 14)."""
    metrics = metrics or ProcessMetrics()
    tally = Tally()
    faults = FaultRules(
        COORDINATOR_PROCESS, methods_of(coordinator_pb2.DESCRIPTOR), config.fault_rules
    )
    # A stream that stalls is cut well within the retry budget, so that it can be tried again.
    stall = max(min(STALL_TIMEOUT, config.retry_budget_seconds / 2), 5.0)
    nodes = RegionNodes(
        config.regions, config.secrets.cluster_credential, config.ca_pem, stall_timeout=stall
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.data_dir / "coordinator.db")
    clock = ClusterClock(config.simulated_clock, store, nodes)
    replication = ReplicationService(config, clock, nodes, store, tally)
    policies = PolicyService(store, clock, nodes, replication, config.runs_page_bytes)
    domain = Coordinator(store, nodes, clock, replication, policies)
    metrics.count(tally, COORDINATOR_COUNTS)
    metrics.read(lambda: coordinator_figures(store))
    # Fault rules act after the credential is checked (issue 13); every call is observed,
    # those they refuse too (issue 14).
    server = new_server(
        interceptors=[
            ObservedCalls(metrics),
            AuthInterceptor(config.secrets, REQUIRED_ROLES),
            FaultInterceptor(faults),
        ]
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(replication, policies, clock, RecoveryPoints(store, clock)), server
    )
    coordinator_pb2_grpc.add_CoordinatorAdminServicer_to_server(
        CoordinatorAdminServicer(policies, clock, replication.links), server
    )
    add_fault_injection(server, faults)
    health_servicer = add_health_and_reflection(server, SERVICE_NAMES)
    address = bind(server, config.listen, config.tls)
    return server, address, domain, health_servicer
