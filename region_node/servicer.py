"""The RegionNode gRPC servicer: convert, call one domain method, convert back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from csbs.errors import InvalidArgument
from csbs.rpc import rpc_method
from csbs.v1 import common_pb2, region_node_pb2_grpc
from csbs.v1 import region_node_pb2 as pb
from region_node import convert
from region_node.service import RegionNodeService


class RegionNodeServicer(region_node_pb2_grpc.RegionNodeServicer):
    def __init__(self, service: RegionNodeService) -> None:
        self._service = service

    @rpc_method
    def GetRegionInfo(
        self, request: pb.GetRegionInfoRequest, context: grpc.ServicerContext
    ) -> common_pb2.RegionInfo:
        return convert.region_info_to_proto(self._service.region_info())

    @rpc_method
    def CreateServer(
        self, request: pb.CreateServerRequest, context: grpc.ServicerContext
    ) -> pb.Server:
        server = self._service.create_server(
            request.project_id,
            request.name,
            request.server_type,
            [d.size_bytes for d in request.disks],
            request.image_id,
            request.request_id,
        )
        return convert.server_to_proto(server)

    @rpc_method
    def GetServer(self, request: pb.GetServerRequest, context: grpc.ServicerContext) -> pb.Server:
        return convert.server_to_proto(
            self._service.get_server(request.project_id, request.server_id)
        )

    @rpc_method
    def ListServers(
        self, request: pb.ListServersRequest, context: grpc.ServicerContext
    ) -> pb.ListServersResponse:
        page = self._service.list_servers(request.project_id, request.page_size, request.page_token)
        return pb.ListServersResponse(
            servers=[convert.server_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def DeleteServer(
        self, request: pb.DeleteServerRequest, context: grpc.ServicerContext
    ) -> pb.Server:
        return convert.server_to_proto(
            self._service.delete_server(request.project_id, request.server_id)
        )

    @rpc_method
    def WatchServer(
        self, request: pb.GetServerRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Server]:
        for server in self._service.watch_server(
            request.project_id, request.server_id, context.is_active
        ):
            yield convert.server_to_proto(server)

    @rpc_method
    def WriteDisk(
        self, request_iterator: Iterator[pb.WriteDiskRequest], context: grpc.ServicerContext
    ) -> pb.WriteDiskResponse:
        first = next(request_iterator, None)
        if first is None:
            return pb.WriteDiskResponse(bytes_written=0)

        def writes() -> Iterator[tuple[int, bytes]]:
            yield first.offset, first.data
            for message in request_iterator:
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

        written = self._service.write_disk(
            first.project_id, first.server_id, first.disk_index, writes()
        )
        return pb.WriteDiskResponse(bytes_written=written)

    @rpc_method
    def ReadDisk(
        self, request: pb.ReadDiskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadDiskResponse]:
        for offset, data in self._service.read_disk(
            request.project_id,
            request.server_id,
            request.disk_index,
            request.offset,
            request.length,
        ):
            yield pb.ReadDiskResponse(offset=offset, data=data)

    @rpc_method
    def CreateBackup(
        self, request: pb.CreateBackupRequest, context: grpc.ServicerContext
    ) -> pb.Backup:
        backup = self._service.create_backup(
            request.project_id,
            request.server_id,
            request.name,
            request.description,
            list(request.disk_indexes),
            request.request_id,
        )
        return convert.backup_to_proto(backup)

    @rpc_method
    def GetBackup(self, request: pb.GetBackupRequest, context: grpc.ServicerContext) -> pb.Backup:
        return convert.backup_to_proto(
            self._service.get_backup(request.project_id, request.backup_id)
        )

    @rpc_method
    def ListBackups(
        self, request: pb.ListBackupsRequest, context: grpc.ServicerContext
    ) -> pb.ListBackupsResponse:
        page = self._service.list_backups(
            request.project_id,
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
        freed = self._service.delete_backup(request.project_id, request.backup_id)
        return pb.DeleteBackupResponse(bytes_freed=freed)

    @rpc_method
    def WatchBackup(
        self, request: pb.GetBackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Backup]:
        for backup in self._service.watch_backup(
            request.project_id, request.backup_id, context.is_active
        ):
            yield convert.backup_to_proto(backup)

    @rpc_method
    def RestoreBackup(
        self, request: pb.RestoreBackupRequest, context: grpc.ServicerContext
    ) -> pb.Server:
        return convert.server_to_proto(
            self._service.restore_backup(request.project_id, request.backup_id)
        )

    @rpc_method
    def CreateImage(
        self, request: pb.CreateImageRequest, context: grpc.ServicerContext
    ) -> pb.Image:
        image = self._service.create_image(
            request.project_id,
            request.backup_id,
            request.name,
            request.description,
            request.request_id,
        )
        return convert.image_to_proto(image)

    @rpc_method
    def GetImage(self, request: pb.GetImageRequest, context: grpc.ServicerContext) -> pb.Image:
        return convert.image_to_proto(self._service.get_image(request.project_id, request.image_id))

    @rpc_method
    def ListImages(
        self, request: pb.ListImagesRequest, context: grpc.ServicerContext
    ) -> pb.ListImagesResponse:
        page = self._service.list_images(request.project_id, request.page_size, request.page_token)
        return pb.ListImagesResponse(
            images=[convert.image_to_proto(i) for i in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def DeleteImage(
        self, request: pb.DeleteImageRequest, context: grpc.ServicerContext
    ) -> pb.DeleteImageResponse:
        self._service.delete_image(request.project_id, request.image_id)
        return pb.DeleteImageResponse()


class RegionNodeAdminServicer(region_node_pb2_grpc.RegionNodeAdminServicer):
    def __init__(self, service: RegionNodeService) -> None:
        self._service = service

    @rpc_method
    def SetReplicationCapability(
        self, request: pb.SetReplicationCapabilityRequest, context: grpc.ServicerContext
    ) -> common_pb2.RegionInfo:
        info = self._service.set_replication_capability(request.accepts_replication)
        return convert.region_info_to_proto(info)
