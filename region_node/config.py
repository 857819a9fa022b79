"""The region node's configuration: one frozen dataclass built in __main__ and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csbs.config import ClusterConfig, ProjectConfig, QuotaConfig, RegionConfig


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
    # Issue 13: the start values of the region's capacity (0: unlimited) and of its projects'
    # quotas; operator calls change them live (region_node.services.limits: which wins).
    capacity_bytes: int = 0
    quotas: tuple[QuotaConfig, ...] = ()

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
            capacity_bytes=region.capacity_bytes,
            quotas=region.quotas,
        )
