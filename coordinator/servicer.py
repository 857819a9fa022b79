"""The Coordinator gRPC servicer: convert, call one domain method, convert back. Policies
belong to a later issue: their calls are left to the generated base class (UNIMPLEMENTED)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from coordinator import convert
from coordinator.replication import ReplicationService
from csbs.clock import Clock
from csbs.rpc import rpc_method
from csbs.v1 import coordinator_pb2 as pb
from csbs.v1 import coordinator_pb2_grpc


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, replication: ReplicationService, clock: Clock) -> None:
        self._replication = replication
        self._clock = clock

    @rpc_method
    def ListReplicationTargets(
        self, request: pb.ListReplicationTargetsRequest, context: grpc.ServicerContext
    ) -> pb.ListReplicationTargetsResponse:
        targets = self._replication.list_targets(request.source_region_id)
        return pb.ListReplicationTargetsResponse(
            targets=[convert.target_to_proto(t) for t in targets]
        )

    @rpc_method
    def ReplicateBackup(
        self, request: pb.ReplicateBackupRequest, context: grpc.ServicerContext
    ) -> pb.ReplicationJob:
        job = self._replication.replicate(convert.replicate_request_from_proto(request))
        return convert.job_to_proto(job)

    @rpc_method
    def GetReplicationJob(
        self, request: pb.GetReplicationJobRequest, context: grpc.ServicerContext
    ) -> pb.ReplicationJob:
        return convert.job_to_proto(self._replication.get_job(request.job_id))

    @rpc_method
    def ListReplicationJobs(
        self, request: pb.ListReplicationJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListReplicationJobsResponse:
        page = self._replication.list_jobs(
            convert.job_filter_from_proto(request), request.page_size, request.page_token
        )
        return pb.ListReplicationJobsResponse(
            jobs=[convert.job_to_proto(j) for j in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def WatchReplicationJob(
        self, request: pb.GetReplicationJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReplicationJob]:
        for job in self._replication.watch_job(request.job_id, context.is_active):
            yield convert.job_to_proto(job)

    @rpc_method
    def GetClock(self, request: pb.GetClockRequest, context: grpc.ServicerContext) -> pb.ClockState:
        # The wall clock until the simulated cluster clock arrives (a later issue).
        return pb.ClockState(now=convert.timestamp(self._clock.now()), simulated=False)
