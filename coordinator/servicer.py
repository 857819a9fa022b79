"""The Coordinator gRPC servicers: convert, call one domain method, convert back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import grpc

from coordinator import convert
from coordinator.cluster_clock import ClusterClock
from coordinator.links import Links
from coordinator.policies import PolicyService
from coordinator.recovery_points import RecoveryPoints
from coordinator.replication import ReplicationService
from csbs.auth import caller_of
from csbs.errors import InvalidArgument
from csbs.rpc import rpc_method
from csbs.timestamps import instant, timestamp
from csbs.v1 import coordinator_pb2 as pb
from csbs.v1 import coordinator_pb2_grpc

MAX_ADVANCE_SECONDS = 10 * 366 * 86400


def _account(context: grpc.ServicerContext) -> str:
    """The account the caller acts for: everything it sees and touches is that account's."""
    return caller_of(context).account_id


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        replication: ReplicationService,
        policies: PolicyService,
        clock: ClusterClock,
        points: RecoveryPoints,
    ) -> None:
        self._replication = replication
        self._policies = policies
        self._clock = clock
        self._points = points

    @rpc_method
    def ListRegions(
        self, request: pb.ListRegionsRequest, context: grpc.ServicerContext
    ) -> pb.ListRegionsResponse:
        regions = self._replication.list_regions(_account(context))
        return pb.ListRegionsResponse(regions=[convert.region_to_proto(r) for r in regions])

    @rpc_method
    def ListReplicationTargets(
        self, request: pb.ListReplicationTargetsRequest, context: grpc.ServicerContext
    ) -> pb.ListReplicationTargetsResponse:
        targets = self._replication.list_targets(_account(context), request.source_region_id)
        return pb.ListReplicationTargetsResponse(
            targets=[convert.target_to_proto(t) for t in targets]
        )

    @rpc_method
    def ReplicateBackup(
        self, request: pb.ReplicateBackupRequest, context: grpc.ServicerContext
    ) -> pb.ReplicationJob:
        job = self._replication.replicate(
            replace(convert.replicate_request_from_proto(request), account_id=_account(context))
        )
        return convert.job_to_proto(job)

    @rpc_method
    def GetReplicationJob(
        self, request: pb.GetReplicationJobRequest, context: grpc.ServicerContext
    ) -> pb.ReplicationJob:
        return convert.job_to_proto(self._replication.get_job(_account(context), request.job_id))

    @rpc_method
    def ListReplicationJobs(
        self, request: pb.ListReplicationJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListReplicationJobsResponse:
        page = self._replication.list_jobs(
            replace(convert.job_filter_from_proto(request), account_id=_account(context)),
            request.page_size,
            request.page_token,
        )
        return pb.ListReplicationJobsResponse(
            jobs=[convert.job_to_proto(j) for j in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def WatchReplicationJob(
        self, request: pb.GetReplicationJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReplicationJob]:
        for job in self._replication.watch_job(
            _account(context), request.job_id, context.is_active
        ):
            yield convert.job_to_proto(job)

    @rpc_method
    def GetClock(self, request: pb.GetClockRequest, context: grpc.ServicerContext) -> pb.ClockState:
        return pb.ClockState(now=timestamp(self._clock.now()), simulated=self._clock.simulated)

    @rpc_method
    def GetRecoveryPoints(
        self, request: pb.GetRecoveryPointsRequest, context: grpc.ServicerContext
    ) -> pb.GetRecoveryPointsResponse:
        now, points = self._points.of(_account(context), convert.point_filter_from_proto(request))
        return pb.GetRecoveryPointsResponse(
            now=timestamp(now), points=[convert.point_to_proto(p) for p in points]
        )

    @rpc_method
    def CreatePolicy(
        self, request: pb.CreatePolicyRequest, context: grpc.ServicerContext
    ) -> pb.Policy:
        policy = self._policies.create(
            _account(context), convert.policy_from_proto(request.policy), request.request_id
        )
        return convert.policy_to_proto(policy)

    @rpc_method
    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.ServicerContext) -> pb.Policy:
        return convert.policy_to_proto(self._policies.get(_account(context), request.policy_id))

    @rpc_method
    def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ListPoliciesResponse:
        page = self._policies.list_policies(
            _account(context),
            request.region_id,
            request.project_id,
            request.page_size,
            request.page_token,
        )
        return pb.ListPoliciesResponse(
            policies=[convert.policy_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    @rpc_method
    def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: grpc.ServicerContext
    ) -> pb.Policy:
        policy = self._policies.update(
            _account(context),
            convert.policy_from_proto(request.policy),
            list(request.update_fields),
        )
        return convert.policy_to_proto(policy)

    @rpc_method
    def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: grpc.ServicerContext
    ) -> pb.DeletePolicyResponse:
        self._policies.delete(_account(context), request.policy_id)
        return pb.DeletePolicyResponse()

    @rpc_method
    def AddPolicyServers(
        self, request: pb.PolicyServersRequest, context: grpc.ServicerContext
    ) -> pb.Policy:
        policy = self._policies.set_servers(
            _account(context), request.policy_id, list(request.server_ids), True
        )
        return convert.policy_to_proto(policy)

    @rpc_method
    def RemovePolicyServers(
        self, request: pb.PolicyServersRequest, context: grpc.ServicerContext
    ) -> pb.Policy:
        policy = self._policies.set_servers(
            _account(context), request.policy_id, list(request.server_ids), False
        )
        return convert.policy_to_proto(policy)

    @rpc_method
    def ExecutePolicy(
        self, request: pb.ExecutePolicyRequest, context: grpc.ServicerContext
    ) -> pb.PolicyRun:
        return convert.run_to_proto(
            self._policies.execute(_account(context), request.policy_id, request.kind)
        )

    @rpc_method
    def ListPolicyRuns(
        self, request: pb.ListPolicyRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListPolicyRunsResponse:
        page = self._policies.list_runs(
            _account(context),
            request.policy_id,
            request.page_size,
            request.page_token,
            convert.run_size_in_list,
        )
        return pb.ListPolicyRunsResponse(
            runs=[convert.run_to_proto(r) for r in page.items],
            next_page_token=page.next_page_token,
        )


class CoordinatorAdminServicer(coordinator_pb2_grpc.CoordinatorAdminServicer):
    """Operator calls."""

    def __init__(self, policies: PolicyService, clock: ClusterClock, links: Links) -> None:
        self._policies = policies
        self._clock = clock
        self._links = links

    @rpc_method
    def SetLink(self, request: pb.SetLinkRequest, context: grpc.ServicerContext) -> pb.Link:
        return convert.link_to_proto(self._links.set(convert.link_from_proto(request.link)))

    @rpc_method
    def ListLinks(
        self, request: pb.ListLinksRequest, context: grpc.ServicerContext
    ) -> pb.ListLinksResponse:
        return pb.ListLinksResponse(links=[convert.link_to_proto(k) for k in self._links.list()])

    @rpc_method
    def ClearLink(
        self, request: pb.ClearLinkRequest, context: grpc.ServicerContext
    ) -> pb.ClearLinkResponse:
        cleared = self._links.clear(request.source_region_id, request.target_region_id)
        return pb.ClearLinkResponse(cleared=cleared)

    @rpc_method
    def AdvanceClock(
        self, request: pb.AdvanceClockRequest, context: grpc.ServicerContext
    ) -> pb.ClockState:
        which = request.WhichOneof("target")
        now = self._clock.now()
        if which == "to":
            to = instant(request.to, "to")
            if to - now > timedelta(seconds=MAX_ADVANCE_SECONDS):
                raise InvalidArgument(
                    f"to: {to.isoformat()} is more than {MAX_ADVANCE_SECONDS} seconds (10 years) "
                    f"after the cluster clock ({now.isoformat()})"
                )
        elif which == "by_seconds":
            if request.by_seconds > MAX_ADVANCE_SECONDS:
                raise InvalidArgument(
                    f"by_seconds {request.by_seconds}: at most {MAX_ADVANCE_SECONDS} (10 years)"
                )
            try:
                to = now + timedelta(seconds=request.by_seconds)
            except OverflowError as exc:
                raise InvalidArgument(
                    f"by_seconds {request.by_seconds}: the cluster clock ({now.isoformat()}) "
                    "would pass 9999-12-31, the last instant it can hold"
                ) from exc
        else:
            raise InvalidArgument("to or by_seconds is required")
        now = self._policies.advance(to)
        return pb.ClockState(now=timestamp(now), simulated=self._clock.simulated)
