"""The coordinator's domain objects, in the product's words. Enum values equal the .proto's, but
nothing here imports protobuf or grpc."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from csbs.node_views import ProjectSummary, ReplicationWay

T = TypeVar("T")


class JobStatus(enum.IntEnum):
    UNSPECIFIED = 0
    WAITING = 1
    REPLICATING = 2
    SUCCESS = 3
    FAILED = 4

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCESS, JobStatus.FAILED)


ACTIVE_STATUSES = (JobStatus.WAITING, JobStatus.REPLICATING)


@dataclass(frozen=True)
class Progress:
    chunks_planned: int = 0
    bytes_planned: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    chunks_skipped: int = 0  # already held by the target region (the account's own chunks)
    bytes_skipped: int = 0


@dataclass(frozen=True)
class ReplicationJob:
    job_id: str
    way: ReplicationWay
    policy_id: str
    source_region_id: str
    source_project_id: str
    source_backup_id: str
    target_region_id: str
    target_project_id: str
    replica_id: str
    replica_name: str
    replica_description: str
    status: JobStatus
    progress: Progress
    failure_reason: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    account_id: str  # the account the job belongs to: no other account sees it (issue 6)
    source_server_id: str = ""  # the source backup's server: replica retention counts per server
    # Its replica was deleted in the target region since (R4a may copy it there again).
    replica_deleted: bool = False
    # What the ended job still owes a node (a leftover replica not removed yet, a record or a
    # hold) and the last error, retried until done; "" when it owes nothing (issue 11).
    cleanup_pending: str = ""
    # When the source backup was taken (issue 13: the recovery point its replica gives); None
    # for a job recorded before this was kept.
    source_backup_at: datetime | None = None


@dataclass(frozen=True)
class ReplicationTarget:
    """A region this region can replicate to now (R5), with the caller's projects there (P3);
    or one that did not answer in time, listed with why (no projects: it cannot be picked)."""

    region_id: str
    display_name: str
    projects: tuple[ProjectSummary, ...]
    unreachable_reason: str = ""  # empty: the region answered

    @property
    def unreachable(self) -> bool:
        return bool(self.unreachable_reason)


@dataclass(frozen=True)
class RegionListing:
    """A region of the cluster as a user finds it (the regional endpoint catalog): what its node
    says of itself, the caller's projects there, and where its node listens; or, for a region
    that did not answer in time, why (as it last said, if it ever did)."""

    region_id: str
    display_name: str
    accepts_replication: bool
    projects: tuple[ProjectSummary, ...]
    node_address: str  # host:port; empty if the node has not published where it listens
    tls: bool
    unreachable_reason: str = ""  # empty: the region answered

    @property
    def unreachable(self) -> bool:
        return bool(self.unreachable_reason)


@dataclass(frozen=True)
class ReplicateRequest:
    """M1: what a user asks for."""

    source_region_id: str
    backup_id: str
    target_region_id: str
    source_project_id: str = ""
    target_project_id: str = ""
    name: str = ""
    description: str = ""
    idempotency_token: str = ""
    way: ReplicationWay = ReplicationWay.MANUAL  # M2 and M3 come from policies
    policy_id: str = ""
    account_id: str = ""  # who asks: its projects only, in both regions (issue 6)


@dataclass(frozen=True)
class JobFilter:
    account_id: str = ""  # always set: a caller lists only its own account's jobs (issue 6)
    status: JobStatus = JobStatus.UNSPECIFIED
    source_backup_id: str = ""
    target_region_id: str = ""
    source_region_id: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    policy_id: str = ""

    def scope(self) -> str:
        """Names the list a page token belongs to: a token is valid only for the same filters."""
        return "jobs/" + "/".join(
            str(v)
            for v in (
                self.account_id,
                int(self.status),
                self.source_backup_id,
                self.target_region_id,
                self.source_region_id,
                self.created_after.timestamp() if self.created_after else "",
                self.created_before.timestamp() if self.created_before else "",
                self.policy_id,
            )
        )


class CleanupKind(enum.StrEnum):
    # Record the job's outcome on the source backup and release its hold.
    SOURCE = "source"
    # Remove what a failed job left in the target region.
    TARGET = "target"
    # Release the hold of a job that was withdrawn before ReplicateBackup answered (its row is
    # gone: the clean-up carries the region and backup itself).
    HOLD = "hold"


@dataclass(frozen=True)
class Cleanup:
    kind: CleanupKind
    job_id: str
    region_id: str
    resource_id: str  # the source backup (SOURCE) or the replica, if known (TARGET)
    attempts: int
    last_error: str


@dataclass
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    next_page_token: str = ""
