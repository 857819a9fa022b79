"""The coordinator's configuration: one frozen dataclass built in __main__ and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.links import Link
from csbs.clients import NodeEndpoint
from csbs.config import TARGETS_TIMEOUT_SECONDS, ClusterConfig
from csbs.credentials import ClusterSecrets
from csbs.faults import COORDINATOR_PROCESS, FaultSpec
from csbs.paging import PAGE_BYTES
from csbs.tls import ProcessTls


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    data_dir: Path
    regions: tuple[NodeEndpoint, ...]
    secrets: ClusterSecrets
    tls: ProcessTls | None = None  # TLS on the coordinator's port and on its channels to nodes
    retry_budget_seconds: float = 60.0
    cleanup_interval_seconds: float = 2.0
    simulated_clock: bool = False
    job_workers: int = 4  # replication jobs copied at once; the others wait (WAITING)
    # In simulated mode: a job crossing a slow link mostly waits for the cluster clock, and
    # must not hold back a job on a fast link (issue 13), so many more run at once.
    simulated_job_workers: int = 64

    @property
    def workers(self) -> int:
        """Replication jobs copied at once."""
        return self.simulated_job_workers if self.simulated_clock else self.job_workers

    targets_timeout_seconds: float = TARGETS_TIMEOUT_SECONDS  # per region, listing targets
    runs_page_bytes: int = PAGE_BYTES  # the most bytes of runs one ListPolicyRuns page holds
    fault_rules: tuple[FaultSpec, ...] = ()  # the config's fault rules for the coordinator
    links: tuple[Link, ...] = ()  # the config file's links between regions (issue 13)
    # Simulated mode: how long, on the cluster clock, a job keeps retrying a cut link.
    simulated_retry_budget_seconds: float = 3600.0
    metrics_listen: str = "127.0.0.1:0"  # issue 14: where Prometheus metrics are served

    @property
    def ca_pem(self) -> bytes | None:
        return None if self.tls is None else self.tls.ca_pem

    @classmethod
    def from_cluster(
        cls, cluster: ClusterConfig, secrets: ClusterSecrets, tls: ProcessTls | None = None
    ) -> CoordinatorConfig:
        return cls(
            listen=cluster.coordinator.listen,
            data_dir=cluster.coordinator.data_dir,
            regions=tuple(NodeEndpoint(r.region_id, r.listen, r.data_dir) for r in cluster.regions),
            secrets=secrets,
            tls=tls,
            retry_budget_seconds=cluster.coordinator.retry_budget_seconds,
            cleanup_interval_seconds=cluster.coordinator.cleanup_interval_seconds,
            simulated_clock=cluster.simulated_clock,
            targets_timeout_seconds=cluster.coordinator.targets_timeout_seconds,
            runs_page_bytes=cluster.coordinator.runs_page_bytes,
            fault_rules=cluster.faults.rules_for(COORDINATOR_PROCESS),
            links=cluster.links,
            simulated_retry_budget_seconds=cluster.coordinator.simulated_retry_budget_seconds,
            metrics_listen=cluster.coordinator.metrics_listen,
        )
