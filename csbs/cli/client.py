"""The csbs command line's clients of a region node and of the coordinator: the user API of each
over a channel. Deadlines, retries of idempotent calls while a process is briefly unavailable,
watches opened again and paging are the client core's (csbs.client_core), with the command
line's own timeouts and retries; `Endpoint._error` here is the one place that turns a failed
call into a one-line CliError with its exit code.

They answer with the .proto messages themselves: the command line prints exactly those (as
tables, or with `--json` as the messages' JSON), so there is nothing to convert. The
coordinator's own client of the nodes (csbs.clients) speaks the internal API in domain values
and is not what a user calls."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from csbs.cli.errors import START_HINT, CliError, Refused, Unreachable
from csbs.client_core import ClientCore, Failure, Retries, Watches
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import quotas_pb2 as qpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub, RegionNodeStub

UNARY_TIMEOUT = 15.0  # a call that reads or writes a few catalog rows
HEAVY_TIMEOUT = 120.0  # a call whose work grows with a backup (create, delete, restore)
TRANSFER_TIMEOUT = 3600.0  # a disk read or write stream, overall
WATCH_TIMEOUT = 300.0  # one watch stream; a longer wait opens another
ADVANCE_TIMEOUT = 3600.0  # moving the simulated clock runs everything that falls due meanwhile
WATCH_RETRIES = 5  # a watch cut by an unavailable process is opened again this many times
WATCH_RETRY_PAUSE = 1.0
PROBE_TIMEOUT = 0.5  # how long to look whether a process that said UNAVAILABLE is connected
RETRY_ATTEMPTS = 3

Metadata = tuple[tuple[str, str], ...]

# A read, or a create with a request ID, is tried again while the process answers UNAVAILABLE.
RETRIES = Retries(attempts=RETRY_ATTEMPTS, max_wait=0.5)
WATCHES = Watches(timeout=WATCH_TIMEOUT, retries=WATCH_RETRIES, pause=WATCH_RETRY_PAUSE)


def probe(address: str, timeout: float = PROBE_TIMEOUT) -> str:
    """What listens at `address`: "closed" (nothing accepts a connection), "tls" (it answers a
    TLS handshake, its certificate unchecked) or "plaintext". Only to explain a failed call."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError):
        return "closed"
    try:
        with context.wrap_socket(raw, server_hostname=host):
            return "tls"
    except OSError:
        return "plaintext"
    finally:
        raw.close()


class Endpoint:
    """One process of the cluster as the command line calls it: its channel, the metadata every
    call carries (the user token), and how its failures read."""

    def __init__(
        self,
        what: str,
        address: str,
        channel: grpc.Channel,
        metadata: Metadata = (),
        not_found_where: str = "",
        *,
        operator_metadata: Metadata = (),
        tls: bool = False,
    ) -> None:
        self.what = what  # "region cn-north-4", "the coordinator"
        self.address = address
        self._channel = channel
        self._metadata = metadata
        self._operator_metadata = operator_metadata
        self._not_found_where = not_found_where
        self._tls = tls
        self._core = ClientCore(retries=RETRIES, to_error=self._error, metadata=metadata)

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def close(self) -> None:
        self._channel.close()

    # -- calls -----------------------------------------------------------------------------------
    def unary(
        self,
        method: Any,
        request: Any,
        *,
        timeout: float = UNARY_TIMEOUT,
        retry: bool = False,
        operator: bool = False,
    ) -> Any:
        """One unary call. `retry`: the call is idempotent (a read, or a create with a request
        ID), so it is tried again while the process answers UNAVAILABLE. `operator`: an
        operator call, made with the operator credential instead of the user token."""
        metadata = self._operator_metadata if operator else self._metadata
        return self._core.unary(method, request, timeout=timeout, retry=retry, metadata=metadata)

    def list_all(self, method: Any, request: Any, field: str) -> list[Any]:
        """Every item of a List call (`field`: the answer's repeated field), all pages."""
        return self._core.list_all(method, request, field, timeout=UNARY_TIMEOUT)

    def client_stream(
        self, method: Any, requests: Iterable[Any], *, timeout: float = TRANSFER_TIMEOUT
    ) -> Any:
        return self._core.client_stream(method, requests, timeout=timeout)

    def server_stream(
        self, method: Any, request: Any, *, timeout: float = TRANSFER_TIMEOUT
    ) -> Iterator[Any]:
        """The messages of a server stream; the call is cancelled if the caller stops early."""
        return self._core.server_stream(method, request, timeout=timeout)

    def watch(self, method: Any, request: Any, done: Callable[[Any], bool]) -> Iterator[Any]:
        """The messages of a Watch call until one is `done` (or the process ends the stream);
        opened again past its deadline or while the process is briefly unavailable."""
        return self._core.watch(method, request, done, WATCHES)

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, failure: Failure, timeout: float) -> CliError:
        error = self._error_of(failure, timeout)
        error.status = failure.code.name
        return error

    def _error_of(self, failure: Failure, timeout: float) -> CliError:
        """The one-line error for a failed call, by its status code: a process that cannot be
        reached, did not answer in time or says one behind it cannot be reached is exit 3;
        anything else it answered is a refusal, exit 1, with the process's own message (which
        names the rule or the field)."""
        code, details = failure.code, failure.details
        if code == grpc.StatusCode.UNAVAILABLE:
            if not self._connected():
                return Unreachable(self._unreachable())
            # Its own answer: a process behind it (a region node the coordinator calls) is down.
            return Unreachable(details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unreachable(
                f"{self.what} at {self.address} did not answer within {timeout:.0f}s "
                "(overloaded, paused or cut off?)"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return Refused(
                f"{details}. Give your API token with --token or CSBS_TOKEN, the operator "
                "credential with --operator-token or CSBS_OPERATOR_TOKEN"
            )
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return Refused(f"{self.what} at {self.address} does not implement this call yet")
        if code == grpc.StatusCode.NOT_FOUND and self._not_found_where:
            return Refused(f"{details} ({self._not_found_where})")
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            return Refused(f"{self.what} failed: {details}")
        return Refused(details)

    def _unreachable(self) -> str:
        """Why the process cannot be reached: not running, or speaking TLS to a plaintext
        client (or the other way round), or a certificate the given CA did not sign."""
        listening = probe(self.address)
        if listening == "tls" and not self._tls:
            return (
                f"{self.what} at {self.address} serves TLS and this command spoke plaintext: "
                "give --ca FILE (or CSBS_CA) with the cluster's CA certificate "
                "(<data_dir>/tls/ca.pem) to verify it"
            )
        if listening == "tls":
            return (
                f"cannot set up TLS with {self.what} at {self.address}: its certificate is not "
                "signed by the CA given with --ca (or CSBS_CA)"
            )
        if listening == "plaintext" and self._tls:
            return (
                f"{self.what} at {self.address} does not serve TLS: this cluster runs without "
                "it, so leave out --ca (and CSBS_CA)"
            )
        return f"cannot reach {self.what} at {self.address}: {START_HINT}"

    def _connected(self) -> bool:
        """Whether the channel reaches the process: an UNAVAILABLE from a connected process is
        its own answer (a node behind it is down), not a cluster that is not running."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=PROBE_TIMEOUT)
        except grpc.FutureTimeoutError:
            return False
        return True


class RegionClient:
    """The user API (RegionNode) of one region's node, and its operator calls (RegionNodeAdmin:
    the region's capacity, its projects' quotas)."""

    def __init__(self, region_id: str, endpoint: Endpoint) -> None:
        self.region_id = region_id
        self.endpoint = endpoint
        self._stub = RegionNodeStub(endpoint.channel)
        self._admin = RegionNodeAdminStub(endpoint.channel)

    def region_info(self) -> common_pb2.RegionInfo:
        info: common_pb2.RegionInfo = self.endpoint.unary(
            self._stub.GetRegionInfo, pb.GetRegionInfoRequest(), retry=True
        )
        return info

    # -- servers ---------------------------------------------------------------------------------
    def create_server(self, request: pb.CreateServerRequest) -> pb.Server:
        server: pb.Server = self.endpoint.unary(
            self._stub.CreateServer, request, timeout=HEAVY_TIMEOUT, retry=bool(request.request_id)
        )
        return server

    def get_server(self, project_id: str, server_id: str) -> pb.Server:
        request = pb.GetServerRequest(project_id=project_id, server_id=server_id)
        server: pb.Server = self.endpoint.unary(self._stub.GetServer, request, retry=True)
        return server

    def list_servers(self, project_id: str) -> list[pb.Server]:
        request = pb.ListServersRequest(project_id=project_id)
        return self.endpoint.list_all(self._stub.ListServers, request, "servers")

    def delete_server(self, project_id: str, server_id: str) -> pb.Server:
        request = pb.DeleteServerRequest(project_id=project_id, server_id=server_id)
        server: pb.Server = self.endpoint.unary(
            self._stub.DeleteServer, request, timeout=HEAVY_TIMEOUT
        )
        return server

    def watch_server(self, project_id: str, server_id: str) -> Iterator[pb.Server]:
        request = pb.GetServerRequest(project_id=project_id, server_id=server_id)
        settled = (pb.SERVER_STATUS_ACTIVE, pb.SERVER_STATUS_ERROR)
        return self.endpoint.watch(self._stub.WatchServer, request, lambda s: s.status in settled)

    def write_disk(self, requests: Iterable[pb.WriteDiskRequest]) -> pb.WriteDiskResponse:
        answer: pb.WriteDiskResponse = self.endpoint.client_stream(self._stub.WriteDisk, requests)
        return answer

    def read_disk(self, request: pb.ReadDiskRequest) -> Iterator[pb.ReadDiskResponse]:
        return self.endpoint.server_stream(self._stub.ReadDisk, request)

    # -- backups ---------------------------------------------------------------------------------
    def create_backup(self, request: pb.CreateBackupRequest) -> pb.Backup:
        backup: pb.Backup = self.endpoint.unary(
            self._stub.CreateBackup, request, timeout=HEAVY_TIMEOUT, retry=bool(request.request_id)
        )
        return backup

    def get_backup(self, project_id: str, backup_id: str) -> pb.Backup:
        request = pb.GetBackupRequest(project_id=project_id, backup_id=backup_id)
        backup: pb.Backup = self.endpoint.unary(self._stub.GetBackup, request, retry=True)
        return backup

    def list_backups(
        self,
        project_id: str,
        server_id: str = "",
        status: pb.BackupStatus.ValueType = pb.BACKUP_STATUS_UNSPECIFIED,
    ) -> list[pb.Backup]:
        request = pb.ListBackupsRequest(project_id=project_id, server_id=server_id, status=status)
        return self.endpoint.list_all(self._stub.ListBackups, request, "backups")

    def delete_backup(self, project_id: str, backup_id: str) -> pb.DeleteBackupResponse:
        request = pb.DeleteBackupRequest(project_id=project_id, backup_id=backup_id)
        answer: pb.DeleteBackupResponse = self.endpoint.unary(
            self._stub.DeleteBackup, request, timeout=HEAVY_TIMEOUT
        )
        return answer

    def watch_backup(self, project_id: str, backup_id: str) -> Iterator[pb.Backup]:
        request = pb.GetBackupRequest(project_id=project_id, backup_id=backup_id)
        settled = (pb.BACKUP_STATUS_AVAILABLE, pb.BACKUP_STATUS_ERROR)
        return self.endpoint.watch(self._stub.WatchBackup, request, lambda b: b.status in settled)

    def restore_backup(self, project_id: str, backup_id: str) -> pb.Server:
        request = pb.RestoreBackupRequest(project_id=project_id, backup_id=backup_id)
        server: pb.Server = self.endpoint.unary(
            self._stub.RestoreBackup, request, timeout=HEAVY_TIMEOUT
        )
        return server

    def verify_backup(self, project_id: str, backup_id: str) -> Iterator[pb.VerifyBackupProgress]:
        request = pb.VerifyBackupRequest(project_id=project_id, backup_id=backup_id)
        return self.endpoint.watch(self._stub.VerifyBackup, request, lambda p: p.done)

    # -- images ----------------------------------------------------------------------------------
    def create_image(self, request: pb.CreateImageRequest) -> pb.Image:
        image: pb.Image = self.endpoint.unary(
            self._stub.CreateImage, request, timeout=HEAVY_TIMEOUT, retry=bool(request.request_id)
        )
        return image

    def get_image(self, project_id: str, image_id: str) -> pb.Image:
        request = pb.GetImageRequest(project_id=project_id, image_id=image_id)
        image: pb.Image = self.endpoint.unary(self._stub.GetImage, request, retry=True)
        return image

    def list_images(self, project_id: str) -> list[pb.Image]:
        request = pb.ListImagesRequest(project_id=project_id)
        return self.endpoint.list_all(self._stub.ListImages, request, "images")

    def delete_image(self, project_id: str, image_id: str) -> pb.DeleteImageResponse:
        request = pb.DeleteImageRequest(project_id=project_id, image_id=image_id)
        answer: pb.DeleteImageResponse = self.endpoint.unary(self._stub.DeleteImage, request)
        return answer

    # -- capacity and quotas ---------------------------------------------------------------------
    def get_quotas(self, project_id: str) -> qpb.Quotas:
        request = qpb.GetQuotasRequest(project_id=project_id)
        quotas: qpb.Quotas = self.endpoint.unary(self._stub.GetQuotas, request, retry=True)
        return quotas

    def set_quota(self, project_id: str, quota_type: str, quota: int) -> qpb.Quotas:
        request = qpb.SetProjectQuotaRequest(project_id=project_id, type=quota_type, quota=quota)
        # Setting a value: the same request twice gives the same quotas.
        quotas: qpb.Quotas = self.endpoint.unary(
            self._admin.SetProjectQuota, request, retry=True, operator=True
        )
        return quotas

    def get_capacity(self) -> qpb.RegionCapacity:
        request = qpb.GetRegionCapacityRequest()
        capacity: qpb.RegionCapacity = self.endpoint.unary(
            self._admin.GetRegionCapacity, request, retry=True, operator=True
        )
        return capacity

    def set_capacity(self, capacity_bytes: int) -> qpb.RegionCapacity:
        request = qpb.SetRegionCapacityRequest(capacity_bytes=capacity_bytes)
        capacity: qpb.RegionCapacity = self.endpoint.unary(
            self._admin.SetRegionCapacity, request, retry=True, operator=True
        )
        return capacity


class CoordinatorClient:
    """The coordinator: its user API (Coordinator: replication targets and jobs, policies and
    their runs, the cluster clock, recovery points) and its operator calls (CoordinatorAdmin:
    AdvanceClock, the links between regions)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._stub = CoordinatorStub(endpoint.channel)
        self._admin = CoordinatorAdminStub(endpoint.channel)

    def list_regions(self) -> list[cpb.Region]:
        """Every region of the cluster with its node's address (the catalog of endpoints)."""
        answer = self.endpoint.unary(self._stub.ListRegions, cpb.ListRegionsRequest(), retry=True)
        return list(answer.regions)

    def list_targets(self, source_region_id: str) -> list[cpb.ReplicationTarget]:
        request = cpb.ListReplicationTargetsRequest(source_region_id=source_region_id)
        answer = self.endpoint.unary(self._stub.ListReplicationTargets, request, retry=True)
        return list(answer.targets)

    def replicate(self, request: cpb.ReplicateBackupRequest) -> cpb.ReplicationJob:
        job: cpb.ReplicationJob = self.endpoint.unary(
            self._stub.ReplicateBackup,
            request,
            timeout=HEAVY_TIMEOUT,
            retry=bool(request.idempotency_token),
        )
        return job

    def get_job(self, job_id: str) -> cpb.ReplicationJob:
        request = cpb.GetReplicationJobRequest(job_id=job_id)
        job: cpb.ReplicationJob = self.endpoint.unary(
            self._stub.GetReplicationJob, request, retry=True
        )
        return job

    def list_jobs(self, request: cpb.ListReplicationJobsRequest) -> list[cpb.ReplicationJob]:
        return self.endpoint.list_all(self._stub.ListReplicationJobs, request, "jobs")

    def watch_job(self, job_id: str) -> Iterator[cpb.ReplicationJob]:
        request = cpb.GetReplicationJobRequest(job_id=job_id)
        ended = (cpb.REPLICATION_JOB_STATUS_SUCCESS, cpb.REPLICATION_JOB_STATUS_FAILED)
        return self.endpoint.watch(
            self._stub.WatchReplicationJob, request, lambda j: j.status in ended
        )

    # -- policies --------------------------------------------------------------------------------
    def create_policy(self, request: cpb.CreatePolicyRequest) -> cpb.Policy:
        policy: cpb.Policy = self.endpoint.unary(
            self._stub.CreatePolicy, request, retry=bool(request.request_id)
        )
        return policy

    def get_policy(self, policy_id: str) -> cpb.Policy:
        request = cpb.GetPolicyRequest(policy_id=policy_id)
        policy: cpb.Policy = self.endpoint.unary(self._stub.GetPolicy, request, retry=True)
        return policy

    def list_policies(self, region_id: str, project_id: str) -> list[cpb.Policy]:
        request = cpb.ListPoliciesRequest(region_id=region_id, project_id=project_id)
        return self.endpoint.list_all(self._stub.ListPolicies, request, "policies")

    def update_policy(self, policy: cpb.Policy, fields: Iterable[str]) -> cpb.Policy:
        request = cpb.UpdatePolicyRequest(policy=policy, update_fields=list(fields))
        # Setting fields to given values: the same request twice gives the same policy.
        updated: cpb.Policy = self.endpoint.unary(self._stub.UpdatePolicy, request, retry=True)
        return updated

    def delete_policy(self, policy_id: str) -> cpb.DeletePolicyResponse:
        request = cpb.DeletePolicyRequest(policy_id=policy_id)
        answer: cpb.DeletePolicyResponse = self.endpoint.unary(self._stub.DeletePolicy, request)
        return answer

    def add_policy_servers(self, policy_id: str, server_ids: Iterable[str]) -> cpb.Policy:
        request = cpb.PolicyServersRequest(policy_id=policy_id, server_ids=list(server_ids))
        policy: cpb.Policy = self.endpoint.unary(self._stub.AddPolicyServers, request)
        return policy

    def remove_policy_servers(self, policy_id: str, server_ids: Iterable[str]) -> cpb.Policy:
        request = cpb.PolicyServersRequest(policy_id=policy_id, server_ids=list(server_ids))
        policy: cpb.Policy = self.endpoint.unary(self._stub.RemovePolicyServers, request)
        return policy

    def execute_policy(self, policy_id: str, kind: cpb.PolicyRunKind.ValueType) -> cpb.PolicyRun:
        request = cpb.ExecutePolicyRequest(policy_id=policy_id, kind=kind)
        run: cpb.PolicyRun = self.endpoint.unary(
            self._stub.ExecutePolicy, request, timeout=HEAVY_TIMEOUT
        )
        return run

    def list_policy_runs(self, policy_id: str) -> list[cpb.PolicyRun]:
        request = cpb.ListPolicyRunsRequest(policy_id=policy_id)
        return self.endpoint.list_all(self._stub.ListPolicyRuns, request, "runs")

    # -- the cluster clock -----------------------------------------------------------------------
    def get_clock(self) -> cpb.ClockState:
        clock: cpb.ClockState = self.endpoint.unary(
            self._stub.GetClock, cpb.GetClockRequest(), retry=True
        )
        return clock

    def advance_clock(self, request: cpb.AdvanceClockRequest) -> cpb.ClockState:
        # Moving to an instant is idempotent; moving by a duration is not.
        clock: cpb.ClockState = self.endpoint.unary(
            self._admin.AdvanceClock,
            request,
            operator=True,
            timeout=ADVANCE_TIMEOUT,
            retry=request.WhichOneof("target") == "to",
        )
        return clock

    # -- the world around the regions (issue 13) -------------------------------------------------
    def get_recovery_points(
        self, request: cpb.GetRecoveryPointsRequest
    ) -> cpb.GetRecoveryPointsResponse:
        answer: cpb.GetRecoveryPointsResponse = self.endpoint.unary(
            self._stub.GetRecoveryPoints, request, retry=True
        )
        return answer

    def set_link(self, link: cpb.Link) -> cpb.Link:
        # Setting a link to given values is idempotent.
        answer: cpb.Link = self.endpoint.unary(
            self._admin.SetLink, cpb.SetLinkRequest(link=link), operator=True, retry=True
        )
        return answer

    def list_links(self) -> list[cpb.Link]:
        answer = self.endpoint.unary(
            self._admin.ListLinks, cpb.ListLinksRequest(), operator=True, retry=True
        )
        return list(answer.links)

    def clear_link(self, source_region_id: str, target_region_id: str) -> cpb.ClearLinkResponse:
        request = cpb.ClearLinkRequest(
            source_region_id=source_region_id, target_region_id=target_region_id
        )
        answer: cpb.ClearLinkResponse = self.endpoint.unary(
            self._admin.ClearLink, request, operator=True, retry=True
        )
        return answer
