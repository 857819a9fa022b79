"""The coordinator's configuration: one frozen dataclass built in __main__ and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csbs.clients import NodeEndpoint
from csbs.config import ClusterConfig


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    data_dir: Path
    regions: tuple[NodeEndpoint, ...]
    # The account a call acts for while calls carry no credential: its main projects are the
    # default source and target projects (P3).
    default_account_id: str
    retry_budget_seconds: float = 60.0
    cleanup_interval_seconds: float = 2.0
    simulated_clock: bool = False
    job_workers: int = 4  # replication jobs copied at once; the others wait (WAITING)

    @classmethod
    def from_cluster(cls, cluster: ClusterConfig) -> CoordinatorConfig:
        return cls(
            listen=cluster.coordinator.listen,
            data_dir=cluster.coordinator.data_dir,
            regions=tuple(NodeEndpoint(r.region_id, r.listen, r.data_dir) for r in cluster.regions),
            default_account_id=cluster.default_account.account_id,
            retry_budget_seconds=cluster.coordinator.retry_budget_seconds,
            cleanup_interval_seconds=cluster.coordinator.cleanup_interval_seconds,
            simulated_clock=cluster.simulated_clock,
        )
