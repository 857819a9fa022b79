"""The public Python API of csbs-sim: one account's calls on a running cluster, for scripts and
for tests of your own DR tooling (the pytest plugin's `csbs_cluster.client()` gives one).

    from csbs.client import Client

    with Client("cluster.toml", token="csbs_...") as client:
        server = client.create_server("cn-north-4", [64 * MIB])
        client.write_disk("cn-north-4", server.server_id, 0, data)
        backup = client.back_up("cn-north-4", server.server_id)
        job = client.replicate("cn-north-4", backup.backup_id, "cn-east-3")

It is the client the `csbs` command runs on (csbs.cli.client over the one client core,
csbs.client_core): a deadline on every call, idempotent calls retried while a process is briefly
unavailable, watches opened again. Every method answers with the .proto message itself
(csbs.v1: `Server`, `Backup`, `ReplicationJob`, `Image`, typed by their stubs). A refusal raises
`Refused` with the process's own words (naming the rule or the field) and the gRPC status code's
name in `.status`; a process that cannot be reached raises `Unreachable`. An empty project is the
account's main project in the region. `region(...)` and `coordinator` give every other call of
the contract."""

from __future__ import annotations

import collections
import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from csbs.cli.client import CoordinatorClient, RegionClient
from csbs.cli.context import Options, Session
from csbs.cli.errors import CliError, Refused, Unreachable, UsageError
from csbs.cli.server import WRITE_PIECE
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

__all__ = ["MIB", "CliError", "Client", "Refused", "Unreachable", "UsageError"]

MIB = 1 << 20
M = TypeVar("M")


def _last(messages: Iterator[M], what: str) -> M:
    """The last message of a watch (the one that says the work ended)."""
    last = collections.deque(messages, maxlen=1)
    if not last:
        raise Unreachable(f"{what}: the watch ended before saying anything")
    return last[0]


class Client:
    """One account's calls on a cluster: from its config file (the addresses its processes
    published, TLS as it says), or from addresses alone (`regions`: region ID -> node address,
    and the coordinator's). Use as a context manager, or call close()."""

    def __init__(
        self,
        config: Path | str | None = None,
        *,
        token: str,
        operator_token: str | None = None,
        ca: Path | str | None = None,
        regions: Mapping[str, str] | None = None,
        coordinator: str | None = None,
        request_id: str | None = None,
    ) -> None:
        # request_id: sent as x-request-id with every call of this client (one grep over the
        # logs then finds all it caused); None: each call gets its own.
        self._session = Session(
            Options(
                config=Path(config) if config is not None else None,
                token=token,
                operator_token=operator_token,
                ca=Path(ca) if ca is not None else None,
                addresses=tuple(f"{r}={a}" for r, a in (regions or {}).items()),
                coordinator=coordinator,
                request_id=request_id,
            )
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    @property
    def region_ids(self) -> list[str]:
        return self._session.region_ids

    def region(self, region_id: str) -> RegionClient:
        """Every call of a region's node (RegionNode, and RegionNodeAdmin's operator calls)."""
        return self._session.region(region_id)

    @property
    def coordinator(self) -> CoordinatorClient:
        """Every call of the coordinator (Coordinator, and CoordinatorAdmin's operator calls)."""
        return self._session.coordinator()

    # -- servers and their disks -------------------------------------------------------------
    def create_server(
        self,
        region_id: str,
        disk_sizes: Sequence[int],
        *,
        name: str = "",
        project_id: str = "",
        server_type: common_pb2.ServerType.ValueType = common_pb2.SERVER_TYPE_ECS,
    ) -> pb.Server:
        """A server with blank disks of these sizes in bytes (the first is the system disk)."""
        return self.region(region_id).create_server(
            pb.CreateServerRequest(
                project_id=project_id,
                name=name,
                server_type=server_type,
                disks=[pb.DiskSpec(size_bytes=size) for size in disk_sizes],
                request_id=uuid.uuid4().hex,
            )
        )

    def write_disk(
        self,
        region_id: str,
        server_id: str,
        disk_index: int,
        data: bytes,
        *,
        offset: int = 0,
        project_id: str = "",
    ) -> int:
        """Writes `data` onto a server's disk at `offset`; returns the bytes written."""

        def pieces() -> Iterable[pb.WriteDiskRequest]:
            for start in range(0, len(data), WRITE_PIECE):
                yield pb.WriteDiskRequest(
                    project_id=project_id,
                    server_id=server_id,
                    disk_index=disk_index,
                    offset=offset + start,
                    data=data[start : start + WRITE_PIECE],
                )

        return self.region(region_id).write_disk(pieces()).bytes_written

    def disk_sha256(
        self, region_id: str, server_id: str, disk_index: int, *, project_id: str = ""
    ) -> str:
        """The SHA-256 (hex) of a server's whole disk."""
        digest = hashlib.sha256()
        request = pb.ReadDiskRequest(
            project_id=project_id, server_id=server_id, disk_index=disk_index
        )
        for message in self.region(region_id).read_disk(request):
            digest.update(message.data)
        return digest.hexdigest()

    def wait_server(self, region_id: str, server_id: str, *, project_id: str = "") -> pb.Server:
        """Waits until a server being created from an image (or restored) is active."""
        server = _last(
            self.region(region_id).watch_server(project_id, server_id), f"server {server_id}"
        )
        if server.status != pb.SERVER_STATUS_ACTIVE:
            raise Refused(f"server {server_id} is in error: {server.error_reason}")
        return server

    def create_server_from_image(
        self,
        region_id: str,
        image_id: str,
        *,
        name: str = "",
        project_id: str = "",
        wait: bool = True,
    ) -> pb.Server:
        """A server whose disks are written from an image of the region; with `wait`, once
        they are."""
        server = self.region(region_id).create_server(
            pb.CreateServerRequest(
                project_id=project_id, name=name, image_id=image_id, request_id=uuid.uuid4().hex
            )
        )
        if wait and server.status != pb.SERVER_STATUS_ACTIVE:
            server = self.wait_server(region_id, server.server_id, project_id=project_id)
        return server

    # -- backups, replication and images ------------------------------------------------------
    def back_up(
        self,
        region_id: str,
        server_id: str,
        *,
        name: str = "",
        project_id: str = "",
        wait: bool = True,
    ) -> pb.Backup:
        """Backs up every disk of a server; with `wait`, returns the backup once available."""
        backup = self.region(region_id).create_backup(
            pb.CreateBackupRequest(
                project_id=project_id, server_id=server_id, name=name, request_id=uuid.uuid4().hex
            )
        )
        if wait:
            backup = self.wait_backup(region_id, backup.backup_id, project_id=project_id)
        return backup

    def wait_backup(self, region_id: str, backup_id: str, *, project_id: str = "") -> pb.Backup:
        """Waits until a backup is available; one that ends in error raises Refused."""
        backup = _last(
            self.region(region_id).watch_backup(project_id, backup_id), f"backup {backup_id}"
        )
        if backup.status != pb.BACKUP_STATUS_AVAILABLE:
            raise Refused(f"backup {backup_id} failed: {backup.error_reason}")
        return backup

    def replicate(
        self,
        region_id: str,
        backup_id: str,
        to_region_id: str,
        *,
        to_project_id: str = "",
        project_id: str = "",
        name: str = "",
        wait: bool = True,
    ) -> cpb.ReplicationJob:
        """Replicates a backup to another region (M1) through the coordinator; with `wait`,
        returns the job once it succeeded (its `replica_id` is the replica there)."""
        job = self.coordinator.replicate(
            cpb.ReplicateBackupRequest(
                source_region_id=region_id,
                source_project_id=project_id,
                backup_id=backup_id,
                target_region_id=to_region_id,
                target_project_id=to_project_id,
                name=name,
                idempotency_token=uuid.uuid4().hex,
            )
        )
        return self.wait_job(job.job_id) if wait else job

    def wait_job(self, job_id: str) -> cpb.ReplicationJob:
        """Waits until a replication job ends; one that failed raises Refused."""
        job = _last(self.coordinator.watch_job(job_id), f"replication job {job_id}")
        if job.status != cpb.REPLICATION_JOB_STATUS_SUCCESS:
            raise Refused(f"replication job {job_id} failed: {job.failure_reason}")
        return job

    def create_image(
        self, region_id: str, backup_id: str, *, name: str = "", project_id: str = ""
    ) -> pb.Image:
        """An image of an available backup or replica of the region."""
        return self.region(region_id).create_image(
            pb.CreateImageRequest(
                project_id=project_id, backup_id=backup_id, name=name, request_id=uuid.uuid4().hex
            )
        )

    # -- the cluster clock (operator) ---------------------------------------------------------
    def advance_clock(self, by: timedelta) -> cpb.ClockState:
        """Moves a simulated cluster clock forward (needs the operator credential); everything
        that falls due meanwhile has run when it returns."""
        return self.coordinator.advance_clock(
            cpb.AdvanceClockRequest(by_seconds=int(by.total_seconds()))
        )
