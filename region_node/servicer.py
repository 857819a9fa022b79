"""The RegionNode gRPC servicer: convert, call one domain method, convert back."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import grpc

from csbs.auth import caller_of
from csbs.errors import InvalidArgument, required
from csbs.memory import StreamSlots
from csbs.rpc import rpc_method
from csbs.timestamps import instant, timestamp
from csbs.v1 import common_pb2, quotas_pb2, region_node_pb2_grpc
from csbs.v1 import region_node_pb2 as pb
from region_node import convert
from region_node.models import ManifestEntry, NewBackup, NewImage, NewServer
from region_node.node import RegionNode

# WriteDisk streams the whole node reads at once, however many are open (issue 12: memory; see
# csbs.memory.StreamSlots). Two keep the disk busy: 16 streams wrote 8 GiB at 357 MB/s unbounded.
WRITE_SLOTS = StreamSlots(slots=2, stall_seconds=2.0)


class RegionNodeServicer(region_node_pb2_grpc.RegionNodeServicer):
    def __init__(self, node: RegionNode) -> None:
        self._node = node

    def _project(self, context: grpc.ServicerContext, project_id: str) -> str:
        """The project the call acts in, checked against the caller's account (issue 6)."""
        return self._node.region.authorize_project(caller_of(context).account_id, project_id)

    @rpc_method
    def GetRegionInfo(
        self, request: pb.GetRegionInfoRequest, context: grpc.ServicerContext
    ) -> common_pb2.RegionInfo:
        return convert.region_info_to_proto(self._node.region.info(caller_of(context).account_id))

    @rpc_method
    def CreateServer(
        self, request: pb.CreateServerRequest, context: grpc.ServicerContext
    ) -> pb.Server:
        server = self._node.servers.create(
            NewServer(
                project_id=self._project(context, request.project_id),
                name=request.name,
                server_type=request.server_type,
                disk_sizes=tuple(d.size_bytes for d in request.disks),
                image_id=request.image_id,
                request_id=request.request_id,
            )
        )
        return convert.server_to_proto(server)

    @rpc_method
    def GetServer(self, request: pb.GetServerRequest, context: grpc.ServicerContext) -> pb.Server:
        return convert.server_to_proto(
            self._node.servers.get(
                self._project(context, request.project_id), required(request.server_id, "server_id")
            )
        )

    @rpc_method
    def ListServers(
        self, request: pb.ListServersRequest, context: grpc.ServicerContext
    ) -> pb.ListServersResponse:
        page = self._node.servers.list(
            self._project(context, request.project_id), request.page_size, request.page_token
        )
        return pb.ListServersResponse(
            servers=[convert.server_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def DeleteServer(
        self, request: pb.DeleteServerRequest, context: grpc.ServicerContext
    ) -> pb.Server:
        return convert.server_to_proto(
            self._node.servers.delete(
                self._project(context, request.project_id), required(request.server_id, "server_id")
            )
        )

    @rpc_method
    def WatchServer(
        self, request: pb.GetServerRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Server]:
        for server in self._node.servers.watch(
            self._project(context, request.project_id),
            required(request.server_id, "server_id"),
            context.is_active,
        ):
            yield convert.server_to_proto(server)

    @rpc_method
    def WriteDisk(
        self, request_iterator: Iterator[pb.WriteDiskRequest], context: grpc.ServicerContext
    ) -> pb.WriteDiskResponse:
        messages = WRITE_SLOTS.each(request_iterator)
        try:
            return self._write_disk(messages, context)
        finally:
            messages.close()  # gives back its slot now, even when the write failed

    def _write_disk(
        self, messages: Generator[pb.WriteDiskRequest, None, None], context: grpc.ServicerContext
    ) -> pb.WriteDiskResponse:
        first = next(messages, None)
        if first is None:
            return pb.WriteDiskResponse(bytes_written=0)

        def writes() -> Iterator[tuple[int, bytes]]:
            yield first.offset, first.data
            for message in messages:
                if (message.server_id, message.disk_index, message.project_id) != (
                    first.server_id,
                    first.disk_index,
                    first.project_id,
                ):
                    raise InvalidArgument(
                        "server_id, project_id and disk_index must be the same in every "
                        "message of one WriteDisk stream"
                    )
                yield message.offset, message.data

        written = self._node.servers.write_disk(
            self._project(context, first.project_id),
            required(first.server_id, "server_id"),
            first.disk_index,
            writes(),
        )
        return pb.WriteDiskResponse(bytes_written=written)

    @rpc_method
    def ReadDisk(
        self, request: pb.ReadDiskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadDiskResponse]:
        for offset, data in self._node.servers.read_disk(
            self._project(context, request.project_id),
            required(request.server_id, "server_id"),
            request.disk_index,
            request.offset,
            request.length,
        ):
            yield pb.ReadDiskResponse(offset=offset, data=data)

    @rpc_method
    def CreateBackup(
        self, request: pb.CreateBackupRequest, context: grpc.ServicerContext
    ) -> pb.Backup:
        backup = self._node.backups.create(
            NewBackup(
                project_id=self._project(context, request.project_id),
                server_id=required(request.server_id, "server_id"),
                name=request.name,
                description=request.description,
                disk_indexes=tuple(request.disk_indexes),
                request_id=request.request_id,
            )
        )
        return convert.backup_to_proto(backup)

    @rpc_method
    def GetBackup(self, request: pb.GetBackupRequest, context: grpc.ServicerContext) -> pb.Backup:
        return convert.backup_to_proto(
            self._node.backups.get(
                self._project(context, request.project_id), required(request.backup_id, "backup_id")
            )
        )

    @rpc_method
    def ListBackups(
        self, request: pb.ListBackupsRequest, context: grpc.ServicerContext
    ) -> pb.ListBackupsResponse:
        page = self._node.backups.list(
            self._project(context, request.project_id),
            request.server_id,
            request.status,
            request.policy_id,
            request.page_size,
            request.page_token,
        )
        return pb.ListBackupsResponse(
            backups=[convert.backup_to_proto(b) for b in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def DeleteBackup(
        self, request: pb.DeleteBackupRequest, context: grpc.ServicerContext
    ) -> pb.DeleteBackupResponse:
        freed = self._node.backups.delete(
            self._project(context, request.project_id), required(request.backup_id, "backup_id")
        )
        return pb.DeleteBackupResponse(bytes_freed=freed)

    @rpc_method
    def WatchBackup(
        self, request: pb.GetBackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Backup]:
        for backup in self._node.backups.watch(
            self._project(context, request.project_id),
            required(request.backup_id, "backup_id"),
            context.is_active,
        ):
            yield convert.backup_to_proto(backup)

    @rpc_method
    def RestoreBackup(
        self, request: pb.RestoreBackupRequest, context: grpc.ServicerContext
    ) -> pb.Server:
        return convert.server_to_proto(
            self._node.backups.restore(
                self._project(context, request.project_id), required(request.backup_id, "backup_id")
            )
        )

    @rpc_method
    def VerifyBackup(
        self, request: pb.VerifyBackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.VerifyBackupProgress]:
        for progress in self._node.backups.verify(
            self._project(context, request.project_id), required(request.backup_id, "backup_id")
        ):
            yield convert.verify_progress_to_proto(progress)

    @rpc_method
    def CreateImage(
        self, request: pb.CreateImageRequest, context: grpc.ServicerContext
    ) -> pb.Image:
        image = self._node.images.create(
            NewImage(
                project_id=self._project(context, request.project_id),
                backup_id=required(request.backup_id, "backup_id"),
                name=request.name,
                description=request.description,
                request_id=request.request_id,
            )
        )
        return convert.image_to_proto(image)

    @rpc_method
    def GetImage(self, request: pb.GetImageRequest, context: grpc.ServicerContext) -> pb.Image:
        return convert.image_to_proto(
            self._node.images.get(
                self._project(context, request.project_id), required(request.image_id, "image_id")
            )
        )

    @rpc_method
    def ListImages(
        self, request: pb.ListImagesRequest, context: grpc.ServicerContext
    ) -> pb.ListImagesResponse:
        page = self._node.images.list(
            self._project(context, request.project_id), request.page_size, request.page_token
        )
        return pb.ListImagesResponse(
            images=[convert.image_to_proto(i) for i in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def DeleteImage(
        self, request: pb.DeleteImageRequest, context: grpc.ServicerContext
    ) -> pb.DeleteImageResponse:
        self._node.images.delete(
            self._project(context, request.project_id), required(request.image_id, "image_id")
        )
        return pb.DeleteImageResponse()

    @rpc_method
    def GetQuotas(
        self, request: quotas_pb2.GetQuotasRequest, context: grpc.ServicerContext
    ) -> quotas_pb2.Quotas:
        project_id = self._project(context, request.project_id)
        return convert.quotas_to_proto(self._node.limits.quotas(project_id))


class RegionNodeAdminServicer(region_node_pb2_grpc.RegionNodeAdminServicer):
    def __init__(self, node: RegionNode) -> None:
        self._node = node

    @rpc_method
    def SetReplicationCapability(
        self, request: pb.SetReplicationCapabilityRequest, context: grpc.ServicerContext
    ) -> common_pb2.RegionInfo:
        info = self._node.region.set_replication_capability(request.accepts_replication)
        return convert.region_info_to_proto(info)

    @rpc_method
    def SetRegionOutage(
        self, request: pb.SetRegionOutageRequest, context: grpc.ServicerContext
    ) -> pb.RegionOutage:
        outage = self._node.outage.set(request.out, request.reason)
        return convert.region_outage_to_proto(outage)

    @rpc_method
    def GetRegionOutage(
        self, request: pb.GetRegionOutageRequest, context: grpc.ServicerContext
    ) -> pb.RegionOutage:
        return convert.region_outage_to_proto(self._node.outage.state)

    @rpc_method
    def GetRegionCapacity(
        self, request: quotas_pb2.GetRegionCapacityRequest, context: grpc.ServicerContext
    ) -> quotas_pb2.RegionCapacity:
        return convert.region_capacity_to_proto(self._node.limits.capacity())

    @rpc_method
    def SetRegionCapacity(
        self, request: quotas_pb2.SetRegionCapacityRequest, context: grpc.ServicerContext
    ) -> quotas_pb2.RegionCapacity:
        capacity = self._node.limits.set_capacity(request.capacity_bytes)
        return convert.region_capacity_to_proto(capacity)

    @rpc_method
    def SetProjectQuota(
        self, request: quotas_pb2.SetProjectQuotaRequest, context: grpc.ServicerContext
    ) -> quotas_pb2.Quotas:
        quotas = self._node.limits.set_quota(request.project_id, request.type, request.quota)
        return convert.quotas_to_proto(quotas)


REPLICA_ID_METADATA = "x-csbs-replica-id"
CHUNK_BATCH_BYTES = 1 << 20  # chunk data one ReadChunks message carries at most (or one chunk)


class RegionNodeInternalServicer(region_node_pb2_grpc.RegionNodeInternalServicer):
    """Calls only the coordinator makes: moving chunks and keeping replication state."""

    def __init__(self, node: RegionNode) -> None:
        self._node = node

    @rpc_method
    def GetBackupManifest(
        self, request: pb.GetBackupManifestRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ManifestPart]:
        for part in self._node.replicas.manifest(required(request.backup_id, "backup_id")):
            yield convert.manifest_part_to_proto(part)

    @rpc_method
    def ReadChunks(
        self, request: pb.ReadChunksRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ChunkBatch]:
        batch = pb.ChunkBatch()
        size = 0
        for digest, data in self._node.replicas.read_chunks(list(request.hashes)):
            if batch.chunks and size + len(data) > CHUNK_BATCH_BYTES:
                yield batch
                batch, size = pb.ChunkBatch(), 0
            batch.chunks.append(pb.Chunk(hash=digest, data=data))
            size += len(data)
        if batch.chunks:
            yield batch

    @rpc_method
    def WriteChunks(
        self, request_iterator: Iterator[pb.ChunkBatch], context: grpc.ServicerContext
    ) -> pb.WriteChunksResponse:
        metadata = dict(context.invocation_metadata())
        replica_id = str(metadata.get(REPLICA_ID_METADATA, ""))
        if not replica_id:
            raise InvalidArgument(f"metadata {REPLICA_ID_METADATA!r} must name the replica")
        written, written_bytes, present = self._node.replicas.write_chunks(
            replica_id, ((c.hash, c.data) for batch in request_iterator for c in batch.chunks)
        )
        return pb.WriteChunksResponse(
            chunks_written=written, bytes_written=written_bytes, chunks_present=present
        )

    @rpc_method
    def CreateReplica(
        self, request_iterator: Iterator[pb.CreateReplicaRequest], context: grpc.ServicerContext
    ) -> pb.Backup:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("CreateReplica: the first message must be the header")
        spec = convert.replica_spec_from_proto(first.header)

        def entries() -> Iterator[ManifestEntry]:
            """The manifest, whole: a stream that ends before its ManifestEnd, or holds other
            than the count it announces, is refused before anything is stored (gRPC may end
            a cancelled caller's stream as if it were complete: grpc/grpc#33038)."""
            sent = 0
            for message in request_iterator:
                if message.HasField("end"):
                    if next(request_iterator, None) is not None:
                        raise InvalidArgument("CreateReplica: nothing follows the manifest's end")
                    if message.end.entries != sent:
                        raise InvalidArgument(
                            f"CreateReplica: the manifest's end announces {message.end.entries} "
                            f"entries, {sent} came"
                        )
                    return
                if not message.HasField("manifest"):
                    raise InvalidArgument("CreateReplica: only the first message is a header")
                for entry in convert.manifest_entries_from_proto(message.manifest):
                    sent += 1
                    yield entry
            raise InvalidArgument(
                "CreateReplica: the stream ended before the manifest's end (ManifestEnd); "
                "no replica is made from part of a manifest"
            )

        return convert.backup_to_proto(self._node.replicas.create(spec, entries()))

    @rpc_method
    def FindMissingChunks(
        self, request: pb.FindMissingChunksRequest, context: grpc.ServicerContext
    ) -> pb.FindMissingChunksResponse:
        found = self._node.replicas.find_missing_chunks(
            required(request.replica_id, "replica_id"), request.page_token, request.page_size
        )
        return pb.FindMissingChunksResponse(
            missing=found.missing,
            chunks_total=found.chunks_total,
            bytes_total=found.bytes_total,
            chunks_already_held=found.chunks_already_held,
            bytes_already_held=found.bytes_already_held,
            next_page_token=found.next_page_token,
        )

    @rpc_method
    def CompleteReplica(
        self, request: pb.CompleteReplicaRequest, context: grpc.ServicerContext
    ) -> pb.Backup:
        return convert.backup_to_proto(
            self._node.replicas.complete(required(request.replica_id, "replica_id"))
        )

    @rpc_method
    def RemoveReplica(
        self, request: pb.RemoveReplicaRequest, context: grpc.ServicerContext
    ) -> pb.RemoveReplicaResponse:
        removed = self._node.replicas.remove(request.replica_id, request.job_id)
        return pb.RemoveReplicaResponse(removed=removed)

    @rpc_method
    def RecordReplication(
        self, request: pb.RecordReplicationRequest, context: grpc.ServicerContext
    ) -> pb.Backup:
        record = convert.record_from_proto(request.record)
        return convert.backup_to_proto(
            self._node.replicas.record(required(request.backup_id, "backup_id"), record)
        )

    @rpc_method
    def HoldBackup(self, request: pb.HoldBackupRequest, context: grpc.ServicerContext) -> pb.Backup:
        return convert.backup_to_proto(
            self._node.replicas.hold(required(request.backup_id, "backup_id"), request.job_id)
        )

    @rpc_method
    def ReleaseBackup(
        self, request: pb.HoldBackupRequest, context: grpc.ServicerContext
    ) -> pb.Backup:
        return convert.backup_to_proto(
            self._node.replicas.release(required(request.backup_id, "backup_id"), request.job_id)
        )

    @rpc_method
    def CreatePolicyBackup(
        self, request: pb.CreatePolicyBackupRequest, context: grpc.ServicerContext
    ) -> pb.Backup:
        b = request.backup
        policy_id = required(request.policy_id, "policy_id")
        backup = self._node.backups.create(
            NewBackup(
                project_id=b.project_id,
                server_id=required(b.server_id, "backup.server_id"),
                name=b.name,
                description=b.description,
                disk_indexes=tuple(b.disk_indexes),
                request_id=b.request_id,
                policy_id=policy_id,
            )
        )
        return convert.backup_to_proto(backup)

    @rpc_method
    def SetClock(
        self, request: pb.SetClockRequest, context: grpc.ServicerContext
    ) -> pb.SetClockResponse:
        now = self._node.region.set_clock(instant(request.now, "now"))
        return pb.SetClockResponse(now=timestamp(now))

    @rpc_method
    def ListDeletedReplicas(
        self, request: pb.ListDeletedReplicasRequest, context: grpc.ServicerContext
    ) -> pb.ListDeletedReplicasResponse:
        found, last_seq = self._node.replicas.deleted_replicas(request.after_seq, request.page_size)
        return pb.ListDeletedReplicasResponse(
            replicas=[convert.deleted_replica_to_proto(d) for d in found], last_seq=last_seq
        )
