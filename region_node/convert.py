"""Domain objects to and from csbs.v1 protobuf messages: the only place that knows both."""

from __future__ import annotations

from csbs.errors import InvalidArgument
from csbs.timestamps import instant, timestamp
from csbs.v1 import common_pb2, quotas_pb2
from csbs.v1 import region_node_pb2 as pb
from region_node import models
from region_node.catalog.replica_deletions import DeletedReplica
from region_node.parts import dt


def region_info_to_proto(info: models.RegionInfo) -> common_pb2.RegionInfo:
    return common_pb2.RegionInfo(
        region_id=info.region_id,
        display_name=info.display_name,
        accepts_replication=info.accepts_replication,
        projects=[
            common_pb2.Project(
                project_id=p.project_id, name=p.name, account_id=p.account_id, main=p.main
            )
            for p in info.projects
        ],
        chunk_size_bytes=info.chunk_size,
    )


def region_outage_to_proto(outage: models.RegionOutage) -> pb.RegionOutage:
    return pb.RegionOutage(
        region_id=outage.region_id,
        out=outage.out,
        reason=outage.reason,
        since=timestamp(outage.since),
    )


def disk_to_proto(disk: models.Disk) -> pb.Disk:
    return pb.Disk(
        disk_index=disk.disk_index,
        disk_id=disk.disk_id,
        size_bytes=disk.size_bytes,
        system=disk.system,
    )


def backup_disk_to_proto(disk: models.Disk) -> pb.BackupDisk:
    return pb.BackupDisk(
        disk_index=disk.disk_index,
        disk_id=disk.disk_id,
        size_bytes=disk.size_bytes,
        system=disk.system,
    )


def server_to_proto(server: models.Server) -> pb.Server:
    return pb.Server(
        server_id=server.server_id,
        project_id=server.project_id,
        name=server.name,
        server_type=int(server.server_type),  # type: ignore[arg-type]
        status=int(server.status),  # type: ignore[arg-type]
        disks=[disk_to_proto(d) for d in server.disks],
        image_id=server.image_id,
        error_reason=server.error_reason,
        progress_bytes_total=server.progress_total,
        progress_bytes_done=server.progress_done,
        created_at=timestamp(server.created_at),
        updated_at=timestamp(server.updated_at),
    )


def origin_to_proto(origin: models.Origin) -> pb.BackupOrigin:
    return pb.BackupOrigin(
        replicated=origin.replicated,
        source_region_id=origin.source_region_id,
        source_project_id=origin.source_project_id,
        source_backup_id=origin.source_backup_id,
        way=int(origin.way),  # type: ignore[arg-type]
        policy_id=origin.policy_id,
        replication_job_id=origin.job_id,
    )


def origin_from_proto(origin: pb.BackupOrigin) -> models.Origin:
    return models.Origin(
        replicated=origin.replicated,
        source_region_id=origin.source_region_id,
        source_project_id=origin.source_project_id,
        source_backup_id=origin.source_backup_id,
        way=_way(int(origin.way)),
        policy_id=origin.policy_id,
        job_id=origin.replication_job_id,
    )


def record_to_proto(record: models.ReplicationRecord) -> pb.ReplicationRecord:
    return pb.ReplicationRecord(
        target_region_id=record.target_region_id,
        target_project_id=record.target_project_id,
        replica_id=record.replica_id,
        way=int(record.way),  # type: ignore[arg-type]
        policy_id=record.policy_id,
        job_id=record.job_id,
        status=int(record.status),  # type: ignore[arg-type]
        failure_reason=record.failure_reason,
        updated_at=timestamp(record.updated_at),
        replica_deleted=record.replica_deleted,
    )


def backup_to_proto(backup: models.Backup) -> pb.Backup:
    return pb.Backup(
        backup_id=backup.backup_id,
        project_id=backup.project_id,
        name=backup.name,
        description=backup.description,
        server_id=backup.server_id,
        server_type=int(backup.server_type),  # type: ignore[arg-type]
        disks=[backup_disk_to_proto(d) for d in backup.disks],
        status=int(backup.status),  # type: ignore[arg-type]
        error_reason=backup.error_reason,
        bytes_to_read=backup.bytes_to_read,
        bytes_read=backup.bytes_read,
        bytes_stored=backup.bytes_stored,
        size_bytes=backup.size_bytes,
        policy_id=backup.policy_id,
        origin=origin_to_proto(backup.origin),
        replications=[record_to_proto(r) for r in backup.replications],
        image_ids=list(backup.image_ids),
        created_at=timestamp(backup.created_at),
        updated_at=timestamp(backup.updated_at),
        completed_at=timestamp(backup.completed_at),
    )


def image_to_proto(image: models.Image) -> pb.Image:
    return pb.Image(
        image_id=image.image_id,
        project_id=image.project_id,
        name=image.name,
        description=image.description,
        backup_id=image.backup_id,
        status=pb.IMAGE_STATUS_AVAILABLE,
        disks=[backup_disk_to_proto(d) for d in image.disks],
        created_at=timestamp(image.created_at),
    )


def manifest_part_to_proto(entries: list[models.ManifestEntry]) -> pb.ManifestPart:
    return pb.ManifestPart(
        entries=[
            pb.ManifestEntry(
                disk_index=e.disk_index, chunk_index=e.chunk_index, hash=e.hash, length=e.length
            )
            for e in entries
        ]
    )


def manifest_entries_from_proto(part: pb.ManifestPart) -> list[models.ManifestEntry]:
    return [
        models.ManifestEntry(e.disk_index, e.chunk_index, e.hash, e.length) for e in part.entries
    ]


def replica_spec_from_proto(header: pb.CreateReplicaHeader) -> models.ReplicaSpec:
    server_type = int(header.server_type)
    if server_type not in (models.ServerType.ECS, models.ServerType.BMS):
        raise InvalidArgument(f"server_type {server_type} is not ECS or BMS")
    return models.ReplicaSpec(
        project_id=header.project_id,
        name=header.name,
        description=header.description,
        server_type=models.ServerType(server_type),
        disks=tuple(
            models.Disk(d.disk_index, d.disk_id or f"{header.job_id}-{d.disk_index}", d.size_bytes)
            for d in header.disks
        ),
        origin=origin_from_proto(header.origin),
        job_id=header.job_id,
    )


def record_from_proto(record: pb.ReplicationRecord) -> models.ReplicationRecord:
    status = int(record.status)
    if status not in (1, 2, 3):
        raise InvalidArgument(f"record.status {status} is not a replication record status")
    return models.ReplicationRecord(
        target_region_id=record.target_region_id,
        target_project_id=record.target_project_id,
        replica_id=record.replica_id,
        way=_way(int(record.way)),
        policy_id=record.policy_id,
        job_id=record.job_id,
        status=models.RecordStatus(status),
        failure_reason=record.failure_reason,
        replica_deleted=record.replica_deleted,
        updated_at=instant(record.updated_at, "record.updated_at"),
    )


def _way(value: int) -> models.ReplicationWay:
    if value not in set(models.ReplicationWay):
        raise InvalidArgument(f"way {value} is not a replication way")
    return models.ReplicationWay(value)


def verify_progress_to_proto(progress: models.VerifyProgress) -> pb.VerifyBackupProgress:
    return pb.VerifyBackupProgress(
        chunks_total=progress.chunks_total,
        chunks_checked=progress.chunks_checked,
        bytes_total=progress.bytes_total,
        bytes_checked=progress.bytes_checked,
        chunks_bad=progress.chunks_bad,
        done=progress.backup is not None,
        backup=backup_to_proto(progress.backup) if progress.backup is not None else None,
    )


def deleted_replica_to_proto(d: DeletedReplica) -> pb.DeletedReplica:
    return pb.DeletedReplica(
        seq=d.seq,
        replica_id=d.replica_id,
        job_id=d.job_id,
        source_region_id=d.source_region_id,
        source_backup_id=d.source_backup_id,
        deleted_at=timestamp(dt(d.deleted_at)),
    )


def region_capacity_to_proto(capacity: models.RegionCapacity) -> quotas_pb2.RegionCapacity:
    return quotas_pb2.RegionCapacity(
        capacity_bytes=capacity.capacity_bytes,
        used_bytes=capacity.used_bytes,
        region_id=capacity.region_id,
        set_by_operator=capacity.set_by_operator,
    )


def quotas_to_proto(quotas: models.Quotas) -> quotas_pb2.Quotas:
    return quotas_pb2.Quotas(
        project_id=quotas.project_id,
        resources=[
            quotas_pb2.QuotaResource(type=r.type, quota=r.quota, used=r.used, unit=r.unit)
            for r in quotas.resources
        ],
    )
