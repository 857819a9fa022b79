"""The node's domain objects, in the product's words. Enum values equal the .proto's, but
nothing here imports protobuf or grpc."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")


class ServerType(enum.IntEnum):
    ECS = 1
    BMS = 2


class ServerStatus(enum.IntEnum):
    CREATING = 1
    ACTIVE = 2
    RESTORING = 3
    DELETING = 4
    ERROR = 5


class BackupStatus(enum.IntEnum):
    CREATING = 1
    AVAILABLE = 2
    ERROR = 3
    REPLICATING = 4
    RESTORING = 5


class ReplicationWay(enum.IntEnum):
    UNSPECIFIED = 0
    MANUAL = 1
    POLICY = 2
    POLICY_EXECUTE = 3


class RecordStatus(enum.IntEnum):
    REPLICATING = 1
    SUCCESS = 2
    FAILED = 3


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    account_id: str
    main: bool


@dataclass(frozen=True)
class RegionInfo:
    region_id: str
    display_name: str
    accepts_replication: bool
    projects: tuple[Project, ...]
    chunk_size: int


@dataclass(frozen=True)
class RegionOutage:
    """Whether the region is out (issue 13), why, and since when it is out or back (None: it
    never was out)."""

    region_id: str
    out: bool
    reason: str
    since: datetime | None


@dataclass(frozen=True)
class Disk:
    disk_index: int
    disk_id: str
    size_bytes: int

    @property
    def system(self) -> bool:
        return self.disk_index == 0


@dataclass(frozen=True)
class Server:
    server_id: str
    project_id: str
    name: str
    server_type: ServerType
    status: ServerStatus
    disks: tuple[Disk, ...]
    image_id: str
    error_reason: str
    progress_total: int
    progress_done: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Origin:
    replicated: bool = False
    source_region_id: str = ""
    source_project_id: str = ""
    source_backup_id: str = ""
    way: ReplicationWay = ReplicationWay.UNSPECIFIED
    policy_id: str = ""
    job_id: str = ""


@dataclass(frozen=True)
class ReplicationRecord:
    target_region_id: str
    target_project_id: str
    replica_id: str
    way: ReplicationWay
    policy_id: str
    job_id: str
    status: RecordStatus
    failure_reason: str
    replica_deleted: bool
    updated_at: datetime


@dataclass(frozen=True)
class Backup:
    backup_id: str
    project_id: str
    name: str
    description: str
    server_id: str
    server_type: ServerType
    disks: tuple[Disk, ...]
    status: BackupStatus
    error_reason: str
    bytes_to_read: int
    bytes_read: int
    bytes_stored: int
    policy_id: str
    origin: Origin
    replications: tuple[ReplicationRecord, ...]
    image_ids: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def size_bytes(self) -> int:
        return sum(d.size_bytes for d in self.disks)

    @property
    def terminal(self) -> bool:
        return self.status in (BackupStatus.AVAILABLE, BackupStatus.ERROR)


@dataclass(frozen=True)
class Image:
    image_id: str
    project_id: str
    name: str
    description: str
    backup_id: str
    disks: tuple[Disk, ...]
    created_at: datetime


@dataclass(frozen=True)
class ManifestEntry:
    disk_index: int
    chunk_index: int
    hash: bytes
    length: int


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    next_page_token: str = ""


@dataclass(frozen=True)
class MissingChunks:
    missing: list[bytes]
    chunks_total: int
    bytes_total: int
    chunks_already_held: int
    bytes_already_held: int
    next_page_token: str = ""


@dataclass(frozen=True)
class ReplicaSpec:
    """What the coordinator says of a replica it is about to fill."""

    project_id: str
    name: str
    description: str
    server_type: ServerType
    disks: tuple[Disk, ...]
    origin: Origin
    job_id: str


@dataclass(frozen=True)
class VerifyProgress:
    """How far VerifyBackup has read; `backup` is set on the last report."""

    chunks_total: int
    chunks_checked: int
    bytes_total: int
    bytes_checked: int
    chunks_bad: int
    backup: Backup | None = None


@dataclass(frozen=True)
class NewServer:
    """CreateServer: disks of these sizes, or (with `image_id`) the disks of an image."""

    project_id: str
    name: str = ""
    server_type: int = 0
    disk_sizes: tuple[int, ...] = ()
    image_id: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class NewBackup:
    """CreateBackup (or a policy's backup, with `policy_id`): these disks, or every disk."""

    project_id: str
    server_id: str
    name: str = ""
    description: str = ""
    disk_indexes: tuple[int, ...] = ()
    request_id: str = ""
    policy_id: str = ""


@dataclass(frozen=True)
class NewImage:
    project_id: str
    backup_id: str
    name: str = ""
    description: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class RegionCapacity:
    """What the region's chunk store may hold (0: unlimited) and holds, in bytes."""

    region_id: str
    capacity_bytes: int
    used_bytes: int
    set_by_operator: bool


@dataclass(frozen=True)
class QuotaResource:
    """One quota of a project, as the real API names it: `backups` (unit "") or
    `backup_capacity` (unit "GB"); quota -1 is unlimited."""

    type: str
    quota: int
    used: int
    unit: str


@dataclass(frozen=True)
class Quotas:
    project_id: str
    resources: tuple[QuotaResource, ...]
