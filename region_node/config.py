"""The region node's configuration: one frozen dataclass built in __main__ and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csbs.config import ClusterConfig, ProjectConfig, QuotaConfig, RegionConfig
from csbs.faults import FaultSpec


@dataclass(frozen=True)
class NodeConfig:
    region_id: str
    display_name: str
    listen: str
    accepts_replication: bool  # the initial capability; an operator call may switch it (R5)
    projects: tuple[ProjectConfig, ...]
    data_dir: Path
    chunk_size: int
    workers: int = 3  # threads that read, hash and write chunks in parallel
    fault_rules: tuple[FaultSpec, ...] = ()  # the config's fault rules for this node (issue 13)
    starts_out: bool = False  # the config lists this region in [faults] outages
    # Issue 13: the start values of the region's capacity (0: unlimited) and of its projects'
    # quotas; operator calls change them live (region_node.services.limits: which wins).
    capacity_bytes: int = 0
    quotas: tuple[QuotaConfig, ...] = ()
    metrics_listen: str = "127.0.0.1:0"  # issue 14: where Prometheus metrics are served

    @classmethod
    def from_cluster(cls, cluster: ClusterConfig, region: RegionConfig) -> NodeConfig:
        return cls(
            region_id=region.region_id,
            display_name=region.display_name,
            listen=region.listen,
            accepts_replication=region.accepts_replication,
            projects=region.projects,
            data_dir=region.data_dir,
            chunk_size=cluster.chunk_size,
            fault_rules=cluster.faults.rules_for(region.region_id),
            starts_out=region.region_id in cluster.faults.outages,
            capacity_bytes=region.capacity_bytes,
            quotas=region.quotas,
            metrics_listen=region.metrics_listen,
        )
