"""Typed clients of the region nodes, for the coordinator: plain values in and out. Deadlines,
retries of idempotent calls while a node is briefly unavailable, the meaning of a status code
and paging are the client core's (csbs.client_core); `failure_error` here says how a node's
failure reads as the coordinator's typed errors (a refusal keeps the node's words and names
the region).

Chunks are relayed between two nodes without being parsed: the source's ReadChunks messages
are passed as raw bytes into the target's WriteChunks (the messages are the same `Chunk`), one
batch of hashes at a time, pulled from the source only as fast as the target takes them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from csbs import request_ids
from csbs.auth import ACTING_ACCOUNT, Metadata, bearer, with_metadata
from csbs.client_core import ClientCore, Failure, Retries
from csbs.config import ConfigError, resolve_address
from csbs.errors import CsbsError, NotFound
from csbs.node_views import (
    BackupSummary,
    DeletedReplica,
    MissingChunks,
    RegionSummary,
    ReplicaHeader,
    ReplicationRecord,
    ServerType,
    backup_from_proto,
    enum_of,
    header_to_proto,
    region_from_proto,
)
from csbs.relay import StallGuard, batch_data_lengths
from csbs.rpc import open_channel
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub, RegionNodeStub

log = logging.getLogger(__name__)


UNARY_TIMEOUT = 10.0  # a call that only reads or writes a few catalog rows
HEAVY_UNARY_TIMEOUT = 60.0  # a call whose work grows with a backup's manifest
STREAM_TIMEOUT = 3600.0  # a stream's overall deadline; stalls are caught much sooner (below)
STALL_TIMEOUT = 30.0  # a stream that moves nothing for this long is cut and counted transient
RELAY_BATCH = 256  # hashes per ReadChunks/WriteChunks pair
# An idempotent call is tried again while the node is UNAVAILABLE (or gRPC's own busy limit).
RETRIES = Retries(attempts=4, max_wait=1.0)

READ_CHUNKS = "/csbs.v1.RegionNodeInternal/ReadChunks"
WRITE_CHUNKS = "/csbs.v1.RegionNodeInternal/WriteChunks"
REPLICA_ID_METADATA = "x-csbs-replica-id"


class NodeError(CsbsError):
    """A call to a region node failed other than by a refusal in product words: the node was
    unreachable, too slow, or failed inside. `transient` says whether trying again may help
    (a job fails at once on anything else: asking again gives the same answer, issue 11)."""

    def __init__(self, region_id: str, code: grpc.StatusCode, details: str) -> None:
        name = getattr(code, "name", str(code))
        super().__init__(f"the region node of {region_id} failed the call ({name}: {details})")
        self.region_id = region_id
        self.code = code
        self.details = details
        self.failure = Failure(code, details)
        # How it reads to a user of the coordinator (a node that cannot serve: UNAVAILABLE).
        self.kind = self.failure.kind

    # The failure is the simulated world's (a link the operator cut), not a process that
    # could not serve: in simulated mode a job waits for it on the cluster clock (issue 13).
    simulated = False

    @property
    def transient(self) -> bool:
        return self.failure.transient

    @property
    def timed_out(self) -> bool:
        """The node did not answer within the call's deadline."""
        return bool(self.code == grpc.StatusCode.DEADLINE_EXCEEDED)


class NodeNotFound(NotFound):
    """A node answered NOT_FOUND: its own message, naming the region."""

    def __init__(self, region_id: str, details: str) -> None:
        CsbsError.__init__(self, f"{details} (in region {region_id})")
        self.resource = ""
        self.resource_id = ""
        self.region_id = region_id


def failure_error(region_id: str, failure: Failure) -> CsbsError:
    """The typed error for a failed call to a region node: a node's refusal keeps its message
    (which starts with the rule it names) with the region added; anything else is a NodeError."""
    if failure.code == grpc.StatusCode.NOT_FOUND:
        return NodeNotFound(region_id, failure.details)
    if failure.refusal:
        return failure.meaning.error(f"{failure.details} (in region {region_id})")
    error = NodeError(region_id, failure.code, failure.details)
    error.simulated = failure.simulated
    return error


def node_error(region_id: str, exc: grpc.RpcError) -> CsbsError:
    """`failure_error` for an RpcError; gRPC's own concurrent-call limit reads as UNAVAILABLE."""
    return failure_error(region_id, Failure.of(exc, busy_is_unavailable=True))


def incomplete_copy(region_id: str, details: str) -> NodeError:
    """A copy into a region that ended without everything arriving: worth another attempt."""
    return NodeError(region_id, grpc.StatusCode.ABORTED, details)


def link_cut(region_id: str, details: str) -> NodeError:
    """A call across a link the operator cut: it fails as a partition would (UNAVAILABLE)."""
    error = NodeError(region_id, grpc.StatusCode.UNAVAILABLE, details)
    error.message = details
    error.simulated = True
    return error


def coordinator_stopping(region_id: str) -> NodeError:
    return NodeError(region_id, grpc.StatusCode.CANCELLED, "the coordinator stops")


class LinkCrossing(Protocol):
    """What a link does to relayed chunks (coordinator/transit.py): how many a batch holds, a
    call before each batch, and a wait after each for its bytes to cross."""

    def batch_hashes(self, average_chunk_bytes: int) -> int: ...

    def crossing(self) -> None: ...

    def crossed(self, wire_bytes: int) -> None: ...


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, NodeError) and exc.transient


# --- conversions ---


# --- the client --------------------------------------------------------------------------------


class RegionNodeClient:
    """One region node, as the coordinator sees it."""

    def __init__(
        self,
        region_id: str,
        channel: grpc.Channel,
        *,
        unary_timeout: float = UNARY_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.region_id = region_id
        self._channel = channel
        self._user = RegionNodeStub(channel)
        self._internal = RegionNodeInternalStub(channel)
        self._unary_timeout = unary_timeout
        self._stall_timeout = stall_timeout
        self._core = ClientCore(
            retries=RETRIES,
            to_error=lambda failure, _timeout: failure_error(region_id, failure),
            busy_is_unavailable=True,
        )
        self._read_chunks = channel.unary_stream(
            READ_CHUNKS,
            request_serializer=pb.ReadChunksRequest.SerializeToString,
            response_deserializer=None,
        )
        self._write_chunks = channel.stream_unary(
            WRITE_CHUNKS,
            request_serializer=None,
            response_deserializer=pb.WriteChunksResponse.FromString,
        )

    def __repr__(self) -> str:
        return f"<RegionNodeClient {self.region_id}>"

    # -- plumbing --------------------------------------------------------------------------------
    def _once(self, method: Any, request: Any, timeout: float) -> Any:
        return self._core.unary(method, request, timeout=timeout)

    def _idempotent(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """An idempotent unary call, tried again (a few times, backing off) while the node is
        UNAVAILABLE; never on a refusal or a timeout."""
        return self._core.unary(method, request, timeout=timeout or self._unary_timeout, retry=True)

    # -- user API --------------------------------------------------------------------------------
    def region_info(self, timeout: float | None = None) -> RegionSummary:
        info = self._idempotent(self._user.GetRegionInfo, pb.GetRegionInfoRequest(), timeout)
        return region_from_proto(info)

    def get_backup(self, project_id: str, backup_id: str) -> BackupSummary:
        backup = self._idempotent(
            self._user.GetBackup, pb.GetBackupRequest(project_id=project_id, backup_id=backup_id)
        )
        return backup_from_proto(backup)

    def list_backups(
        self, project_id: str, policy_id: str = "", server_id: str = ""
    ) -> list[BackupSummary]:
        """Every backup of a project (all pages), optionally of one policy or server."""
        request = pb.ListBackupsRequest(
            project_id=project_id, policy_id=policy_id, server_id=server_id
        )
        backups = self._core.list_all(
            self._user.ListBackups, request, "backups", timeout=self._unary_timeout
        )
        return [backup_from_proto(b) for b in backups]

    def delete_backup(self, project_id: str, backup_id: str) -> None:
        self._once(
            self._user.DeleteBackup,
            pb.DeleteBackupRequest(project_id=project_id, backup_id=backup_id),
            self._unary_timeout,
        )

    def server_type(self, project_id: str, server_id: str) -> ServerType:
        """The kind of a server of the project (NOT_FOUND if it has none such)."""
        server = self._idempotent(
            self._user.GetServer, pb.GetServerRequest(project_id=project_id, server_id=server_id)
        )
        return enum_of(ServerType, server.server_type)  # type: ignore[no-any-return]

    def create_policy_backup(
        self, project_id: str, server_id: str, name: str, policy_id: str, request_id: str
    ) -> BackupSummary:
        """A backup made by a policy; idempotent by request ID."""
        backup = self._idempotent(
            self._internal.CreatePolicyBackup,
            pb.CreatePolicyBackupRequest(
                backup=pb.CreateBackupRequest(
                    project_id=project_id, server_id=server_id, name=name, request_id=request_id
                ),
                policy_id=policy_id,
            ),
        )
        return backup_from_proto(backup)

    def set_clock(self, now: datetime, timeout: float | None = None) -> datetime:
        """Simulated mode: moves the node's clock; answers the node's now (never earlier)."""
        stamp = Timestamp()
        stamp.FromDatetime(now)
        answer = self._idempotent(self._internal.SetClock, pb.SetClockRequest(now=stamp), timeout)
        return answer.now.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]

    # -- source side -----------------------------------------------------------------------------
    def hold_backup(self, backup_id: str, job_id: str) -> None:
        self._idempotent(
            self._internal.HoldBackup, pb.HoldBackupRequest(backup_id=backup_id, job_id=job_id)
        )

    def release_backup(self, backup_id: str, job_id: str) -> None:
        self._idempotent(
            self._internal.ReleaseBackup, pb.HoldBackupRequest(backup_id=backup_id, job_id=job_id)
        )

    def record_replication(self, backup_id: str, record: ReplicationRecord) -> None:
        request = pb.RecordReplicationRequest(
            backup_id=backup_id,
            record=pb.ReplicationRecord(
                target_region_id=record.target_region_id,
                target_project_id=record.target_project_id,
                replica_id=record.replica_id,
                way=int(record.way),  # type: ignore[arg-type]
                policy_id=record.policy_id,
                job_id=record.job_id,
                status=int(record.status),  # type: ignore[arg-type]
                failure_reason=record.failure_reason,
                replica_deleted=record.replica_deleted,
            ),
        )
        self._idempotent(self._internal.RecordReplication, request)

    # -- either side -----------------------------------------------------------------------------
    def deleted_replicas(self, after_seq: int) -> tuple[list[DeletedReplica], int]:
        """The replicas deleted in this region after `after_seq` (one page, in order), and the
        node's newest seq."""
        answer = self._idempotent(
            self._internal.ListDeletedReplicas, pb.ListDeletedReplicasRequest(after_seq=after_seq)
        )
        found = [
            DeletedReplica(d.seq, d.replica_id, d.job_id, d.source_region_id, d.source_backup_id)
            for d in answer.replicas
        ]
        return found, answer.last_seq

    # -- target side -----------------------------------------------------------------------------
    def create_replica(
        self,
        header: ReplicaHeader,
        source: RegionNodeClient,
        source_backup_id: str,
        stop: threading.Event | None = None,
    ) -> BackupSummary:
        """Creates the replica (idempotently, by job ID) with the source backup's manifest,
        streamed from the source node into this one part by part. A failure of the source
        cancels the call, so that a replica is never made from part of a manifest."""
        manifest = source._internal.GetBackupManifest(
            pb.GetBackupManifestRequest(backup_id=source_backup_id), timeout=STREAM_TIMEOUT
        )
        source_error: list[grpc.RpcError] = []
        guard = StallGuard(self._stall_timeout, stop, HEAVY_UNARY_TIMEOUT)
        calls: list[Any] = []
        call_made = threading.Event()

        def requests() -> Iterator[pb.CreateReplicaRequest]:
            yield pb.CreateReplicaRequest(header=header_to_proto(header))
            sent = 0
            try:
                for part in manifest:
                    guard.touch()
                    sent += len(part.entries)
                    yield pb.CreateReplicaRequest(manifest=part)
            except grpc.RpcError as exc:
                source_error.append(exc)
                # Cancelled before the stream ends: an incomplete manifest must never count.
                # (The node also refuses a stream without its end, should gRPC end the
                # cancelled stream as if it were complete.)
                call_made.wait()
                calls[0].cancel()
                return
            yield pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=sent))
            guard.sending_done()

        with guard:
            call = self._internal.CreateReplica.future(requests(), timeout=STREAM_TIMEOUT)
            calls.append(call)
            call_made.set()
            guard.on_fire(call.cancel)
            guard.on_fire(manifest.cancel)
            try:
                replica = call.result()
            except (grpc.RpcError, grpc.FutureCancelledError) as exc:
                raise self._stream_error(exc, guard, source, source_error, "manifest") from None
            finally:
                manifest.cancel()
        return backup_from_proto(replica)

    def find_missing_chunks(self, replica_id: str, page_token: str = "") -> MissingChunks:
        """One page of the chunks the replica lacks; the first (no token) counts them all."""
        answer = self._idempotent(
            self._internal.FindMissingChunks,
            pb.FindMissingChunksRequest(replica_id=replica_id, page_token=page_token),
            HEAVY_UNARY_TIMEOUT,
        )
        return MissingChunks(
            missing=tuple(answer.missing),
            chunks_total=answer.chunks_total,
            bytes_total=answer.bytes_total,
            chunks_already_held=answer.chunks_already_held,
            bytes_already_held=answer.bytes_already_held,
            next_page_token=answer.next_page_token,
        )

    def complete_replica(self, replica_id: str) -> BackupSummary:
        backup = self._idempotent(
            self._internal.CompleteReplica,
            pb.CompleteReplicaRequest(replica_id=replica_id),
            HEAVY_UNARY_TIMEOUT,
        )
        return backup_from_proto(backup)

    def remove_replica(self, replica_id: str, job_id: str) -> bool:
        answer = self._idempotent(
            self._internal.RemoveReplica,
            pb.RemoveReplicaRequest(replica_id=replica_id, job_id=job_id),
            HEAVY_UNARY_TIMEOUT,
        )
        return bool(answer.removed)

    def relay_chunks(
        self,
        source: RegionNodeClient,
        replica_id: str,
        hashes: Sequence[bytes],
        on_chunk: Callable[[int], None],
        stop: threading.Event | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        link: LinkCrossing | None = None,
        average_chunk_bytes: int = 0,
    ) -> int:
        """Copies the named chunks from `source` into this node for the replica, RELAY_BATCH
        hashes per ReadChunks/WriteChunks pair, forwarding each message as the raw bytes it
        arrived as. Calls `on_chunk(data_length)` for each chunk as it passes (from a gRPC
        thread), and `on_batch(chunks_written, bytes_written)` with the target's answer to each
        batch. Returns the bytes sent on the wire (the raw message lengths). What reached the
        target before a failure stays there (it commits as it goes). With a `link`, batches are
        sized by it and each waits to cross it."""
        wire_bytes = 0
        start = 0
        while start < len(hashes):
            size = RELAY_BATCH if link is None else link.batch_hashes(average_chunk_bytes)
            batch = hashes[start : start + size]
            start += size
            if link is not None:
                link.crossing()
            sent, answer = self._relay_batch(source, replica_id, batch, on_chunk, stop)
            wire_bytes += sent
            if on_batch is not None:
                on_batch(answer.chunks_written, answer.bytes_written)
            if link is not None:
                link.crossed(sent)
        return wire_bytes

    def _relay_batch(
        self,
        source: RegionNodeClient,
        replica_id: str,
        hashes: Sequence[bytes],
        on_chunk: Callable[[int], None],
        stop: threading.Event | None,
    ) -> tuple[int, pb.WriteChunksResponse]:
        if stop is not None and stop.is_set():
            raise coordinator_stopping(self.region_id)
        reading = source._read_chunks(
            pb.ReadChunksRequest(hashes=list(hashes)), timeout=STREAM_TIMEOUT
        )
        source_error: list[grpc.RpcError] = []
        wire_bytes = 0
        guard = StallGuard(self._stall_timeout, stop, HEAVY_UNARY_TIMEOUT)

        def forward() -> Iterator[bytes]:
            nonlocal wire_bytes
            try:
                for raw in reading:
                    guard.touch()
                    wire_bytes += len(raw)
                    try:
                        for length in batch_data_lengths(raw):
                            on_chunk(length)
                    except Exception:  # progress reporting must never cut the stream
                        log.exception("progress callback failed")
                    yield raw
            except grpc.RpcError as exc:
                # Ending the stream keeps what already reached the target; the error is raised
                # once the target has answered.
                source_error.append(exc)
            guard.sending_done()

        with guard:
            writing = self._write_chunks.future(
                forward(),
                timeout=STREAM_TIMEOUT,
                metadata=((REPLICA_ID_METADATA, replica_id),),
            )
            guard.on_fire(writing.cancel)
            guard.on_fire(reading.cancel)
            try:
                answer = writing.result()
            except (grpc.RpcError, grpc.FutureCancelledError) as exc:
                raise self._stream_error(exc, guard, source, source_error, "chunks") from None
            finally:
                reading.cancel()
        if source_error:
            raise node_error(source.region_id, source_error[0])
        return wire_bytes, answer

    def _stream_error(
        self,
        exc: BaseException,
        guard: StallGuard,
        source: RegionNodeClient,
        source_error: list[grpc.RpcError],
        what: str,
    ) -> CsbsError:
        """Which side a failed source-to-target stream failed on, as a typed error."""
        if guard.fired == "stopped":
            return NodeError(self.region_id, grpc.StatusCode.CANCELLED, "the coordinator stops")
        if guard.fired == "stalled":
            return NodeError(
                self.region_id,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no {what} moved from region {source.region_id} to region {self.region_id} "
                f"for {self._stall_timeout:.0f}s",
            )
        if guard.fired == "unanswered":
            return NodeError(
                self.region_id,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"region {self.region_id} did not answer within {HEAVY_UNARY_TIMEOUT:.0f}s "
                f"after the last {what} from region {source.region_id}",
            )
        if source_error:
            return node_error(source.region_id, source_error[0])
        if isinstance(exc, grpc.RpcError):
            return node_error(self.region_id, exc)
        return NodeError(self.region_id, grpc.StatusCode.CANCELLED, "the stream was cancelled")


# --- every node of a cluster -------------------------------------------------------------------


@dataclass(frozen=True)
class NodeEndpoint:
    """Where a region's node listens, and where it publishes the address it bound (port 0)."""

    region_id: str
    listen: str
    data_dir: Path


class RegionNodes:
    """Clients of every region's node. A node's address is looked up at each `client()` call,
    so that a node that came back on another port (port 0) is found again; channels are kept
    per address. Every call carries the cluster credential and, when the coordinator acts for
    an account, that account (the node then shows and touches only that account's projects)."""

    def __init__(
        self,
        endpoints: Sequence[NodeEndpoint],
        cluster_credential: str,
        ca_pem: bytes | None = None,
        **client_options: float,
    ) -> None:
        self._endpoints: Mapping[str, NodeEndpoint] = {e.region_id: e for e in endpoints}
        self._credential = cluster_credential
        self._ca_pem = ca_pem
        self._client_options = client_options
        self._lock = threading.Lock()
        self._current: dict[str, tuple[str, grpc.Channel]] = {}  # region: (address, channel)
        # Every channel opened, closed only at close(): a call may still use an old one.
        self._opened: list[grpc.Channel] = []
        self._clients: dict[tuple[str, str], RegionNodeClient] = {}  # (region, account)

    @property
    def region_ids(self) -> list[str]:
        return list(self._endpoints)

    def __contains__(self, region_id: object) -> bool:
        return region_id in self._endpoints

    def published_address(self, region_id: str) -> tuple[str, bool]:
        """Where the region's node listens now ("" if it has not published it) and whether it
        speaks TLS; KeyError for a region not in the cluster."""
        endpoint = self._endpoints[region_id]
        try:
            address = resolve_address(endpoint.listen, endpoint.data_dir)
        except ConfigError:
            address = ""
        return address, self._ca_pem is not None

    def client(self, region_id: str, account_id: str = "") -> RegionNodeClient:
        """The client of a region's node, acting for `account_id` (empty: for no account);
        KeyError for a region not in the cluster; NodeError (UNAVAILABLE) if the node has not
        published where it listens."""
        endpoint = self._endpoints[region_id]
        try:
            address = resolve_address(endpoint.listen, endpoint.data_dir)
        except ConfigError as exc:
            raise NodeError(region_id, grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        with self._lock:
            current = self._current.get(region_id)
            if current is None or current[0] != address:
                current = self._current[region_id] = (address, open_channel(address, self._ca_pem))
                self._opened.append(current[1])
                for key in [k for k in self._clients if k[0] == region_id]:
                    del self._clients[key]
            client = self._clients.get((region_id, account_id))
            if client is None:
                metadata = [bearer(self._credential)]
                if account_id:
                    metadata.append((ACTING_ACCOUNT, account_id))
                channel = with_metadata(current[1], self._with_request_id(metadata))
                client = RegionNodeClient(region_id, channel, **self._client_options)
                self._clients[(region_id, account_id)] = client
            return client

    @staticmethod
    def _with_request_id(metadata: Metadata) -> Callable[[str], Metadata]:
        """Each call carries the request ID of the work that makes it (issue 14)."""
        return lambda _method: [*metadata, *request_ids.outgoing()]

    def close(self) -> None:
        with self._lock:
            for channel in self._opened:
                channel.close()
            self._opened.clear()
            self._current.clear()
            self._clients.clear()
