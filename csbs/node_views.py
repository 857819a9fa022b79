"""The coordinator's view of what the region nodes hold: the values its node client
(csbs.clients) takes and returns, and their conversions from and to the .proto messages. Enum
values equal the .proto's (tests/test_enums_match_proto.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb

# --- values ------------------------------------------------------------------------------------
# Enum values equal the .proto's; nothing that uses these imports protobuf.


class ServerType(enum.IntEnum):
    UNSPECIFIED = 0
    ECS = 1
    BMS = 2


class BackupStatus(enum.IntEnum):
    UNSPECIFIED = 0
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
    UNSPECIFIED = 0
    REPLICATING = 1
    SUCCESS = 2
    FAILED = 3


@dataclass(frozen=True)
class ProjectSummary:
    project_id: str
    name: str
    account_id: str
    main: bool


@dataclass(frozen=True)
class RegionSummary:
    """What a region node says about itself (R5, P3)."""

    region_id: str
    display_name: str
    accepts_replication: bool
    projects: tuple[ProjectSummary, ...]
    chunk_size_bytes: int

    def project(self, project_id: str) -> ProjectSummary | None:
        return next((p for p in self.projects if p.project_id == project_id), None)

    def main_project(self, account_id: str | None = None) -> ProjectSummary | None:
        """The account's main project here (the first main one if no account is given)."""
        return next(
            (
                p
                for p in self.projects
                if p.main and (account_id is None or p.account_id == account_id)
            ),
            None,
        )


@dataclass(frozen=True)
class BackupDisk:
    disk_index: int
    disk_id: str
    size_bytes: int
    system: bool


@dataclass(frozen=True)
class BackupOrigin:
    replicated: bool = False
    source_region_id: str = ""
    source_project_id: str = ""
    source_backup_id: str = ""
    way: ReplicationWay = ReplicationWay.UNSPECIFIED
    policy_id: str = ""
    replication_job_id: str = ""


@dataclass(frozen=True)
class BackupSummary:
    """The fields of a backup the coordinator decides by."""

    backup_id: str
    project_id: str
    name: str
    server_type: ServerType
    status: BackupStatus
    disks: tuple[BackupDisk, ...]
    origin: BackupOrigin
    policy_id: str = ""
    server_id: str = ""
    image_ids: tuple[str, ...] = ()
    created_at: datetime | None = None
    error_reason: str = ""


@dataclass(frozen=True)
class ReplicaHeader:
    """What CreateReplica is told before the manifest: where the replica goes and what it is."""

    project_id: str
    name: str
    description: str
    server_type: ServerType
    disks: tuple[BackupDisk, ...]
    origin: BackupOrigin
    job_id: str


@dataclass(frozen=True)
class MissingChunks:
    """A page of FindMissingChunks: the chunks lacking among the manifest entries it looked
    at, and (first page only) the counts of the whole manifest."""

    missing: tuple[bytes, ...]
    chunks_total: int
    bytes_total: int
    chunks_already_held: int
    bytes_already_held: int
    next_page_token: str = ""

    @property
    def chunks_lacking(self) -> int:
        """Entries of the whole manifest the target lacks (a first page's counts)."""
        return self.chunks_total - self.chunks_already_held


@dataclass(frozen=True)
class ReplicationRecord:
    """A source backup's record of one replication of it."""

    target_region_id: str
    target_project_id: str
    replica_id: str
    way: ReplicationWay
    policy_id: str
    job_id: str
    status: RecordStatus
    failure_reason: str = ""
    replica_deleted: bool = False  # the replica was deleted in the target region since


@dataclass(frozen=True)
class DeletedReplica:
    """A replica a user (or a policy's retention) deleted in its region."""

    seq: int
    replica_id: str
    job_id: str
    source_region_id: str
    source_backup_id: str


# --- errors ------------------------------------------------------------------------------------


# --- conversions -------------------------------------------------------------------------------


def disk_from_proto(d: pb.BackupDisk) -> BackupDisk:
    return BackupDisk(d.disk_index, d.disk_id, d.size_bytes, d.system)


def disk_to_proto(d: BackupDisk) -> pb.BackupDisk:
    return pb.BackupDisk(
        disk_index=d.disk_index, disk_id=d.disk_id, size_bytes=d.size_bytes, system=d.system
    )


def origin_to_proto(o: BackupOrigin) -> pb.BackupOrigin:
    return pb.BackupOrigin(
        replicated=o.replicated,
        source_region_id=o.source_region_id,
        source_project_id=o.source_project_id,
        source_backup_id=o.source_backup_id,
        way=int(o.way),  # type: ignore[arg-type]
        policy_id=o.policy_id,
        replication_job_id=o.replication_job_id,
    )


def enum_of(kind: type[enum.IntEnum], value: int) -> Any:
    try:
        return kind(value)
    except ValueError:
        return kind(0)


def backup_from_proto(b: pb.Backup) -> BackupSummary:
    o = b.origin
    return BackupSummary(
        backup_id=b.backup_id,
        project_id=b.project_id,
        name=b.name,
        server_type=enum_of(ServerType, b.server_type),
        status=enum_of(BackupStatus, b.status),
        disks=tuple(disk_from_proto(d) for d in b.disks),
        origin=BackupOrigin(
            replicated=o.replicated,
            source_region_id=o.source_region_id,
            source_project_id=o.source_project_id,
            source_backup_id=o.source_backup_id,
            way=enum_of(ReplicationWay, o.way),
            policy_id=o.policy_id,
            replication_job_id=o.replication_job_id,
        ),
        policy_id=b.policy_id,
        server_id=b.server_id,
        image_ids=tuple(b.image_ids),
        created_at=b.created_at.ToDatetime(tzinfo=UTC) if b.HasField("created_at") else None,
        error_reason=b.error_reason,
    )


def region_from_proto(info: common_pb2.RegionInfo) -> RegionSummary:
    return RegionSummary(
        region_id=info.region_id,
        display_name=info.display_name,
        accepts_replication=info.accepts_replication,
        projects=tuple(
            ProjectSummary(p.project_id, p.name, p.account_id, p.main) for p in info.projects
        ),
        chunk_size_bytes=info.chunk_size_bytes,
    )


def header_to_proto(h: ReplicaHeader) -> pb.CreateReplicaHeader:
    return pb.CreateReplicaHeader(
        project_id=h.project_id,
        name=h.name,
        description=h.description,
        server_type=int(h.server_type),  # type: ignore[arg-type]
        disks=[disk_to_proto(d) for d in h.disks],
        origin=origin_to_proto(h.origin),
        job_id=h.job_id,
    )
