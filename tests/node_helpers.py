"""Helpers for driving a region node over gRPC in tests: write and read disks, wait for
backups and servers to settle."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from csbs.rpc import replaced, rewrite_calls
from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeStub

if TYPE_CHECKING:
    from region_node.node import RegionNode

MIB = 1 << 20
WAIT_SECONDS = 120.0

T = TypeVar("T")


def node(channel: grpc.Channel) -> RegionNodeStub:
    return RegionNodeStub(channel)


def node_with_deadline(channel: grpc.Channel, seconds: float = 30.0) -> RegionNodeStub:
    """A stub whose calls all have a deadline: `seconds` unless the call names its own."""
    return RegionNodeStub(
        rewrite_calls(
            channel, lambda d: d if d.timeout is not None else replaced(d, timeout=seconds)
        )
    )


def make_server(
    stub: RegionNodeStub,
    sizes_mib: list[int],
    project_id: str = "",
    server_type: common_pb2.ServerType.ValueType = common_pb2.SERVER_TYPE_UNSPECIFIED,
    name: str = "",
) -> pb.Server:
    server: pb.Server = stub.CreateServer(
        pb.CreateServerRequest(
            project_id=project_id,
            name=name,
            server_type=server_type,
            disks=[pb.DiskSpec(size_bytes=s * MIB) for s in sizes_mib],
        ),
        timeout=30,
    )
    return server


def seeded_bytes(seed: int, length: int) -> bytes:
    """Reproducible incompressible bytes (made in pieces: randbytes is limited to 256 MiB)."""
    rng = random.Random(seed)
    piece = 16 * MIB
    return b"".join(rng.randbytes(min(piece, length - i)) for i in range(0, length, piece))


def write(
    stub: RegionNodeStub,
    server_id: str,
    disk_index: int,
    offset: int,
    data: bytes,
    project_id: str = "",
    piece: int = 4 * MIB,
) -> int:
    def messages() -> Iterator[pb.WriteDiskRequest]:
        for start in range(0, len(data), piece):
            yield pb.WriteDiskRequest(
                project_id=project_id,
                server_id=server_id,
                disk_index=disk_index,
                offset=offset + start,
                data=data[start : start + piece],
            )

    return int(stub.WriteDisk(messages(), timeout=WAIT_SECONDS).bytes_written)


def read(
    stub: RegionNodeStub,
    server_id: str,
    disk_index: int,
    offset: int = 0,
    length: int = 0,
    project_id: str = "",
) -> bytes:
    request = pb.ReadDiskRequest(
        project_id=project_id,
        server_id=server_id,
        disk_index=disk_index,
        offset=offset,
        length=length,
    )
    return b"".join(m.data for m in stub.ReadDisk(request, timeout=WAIT_SECONDS))


def disk_sha256(stub: RegionNodeStub, server_id: str, disk_index: int, project_id: str = "") -> str:
    digest = hashlib.sha256()
    request = pb.ReadDiskRequest(project_id=project_id, server_id=server_id, disk_index=disk_index)
    for message in stub.ReadDisk(request, timeout=WAIT_SECONDS):
        digest.update(message.data)
    return digest.hexdigest()


def wait_backup(stub: RegionNodeStub, backup_id: str, project_id: str = "") -> pb.Backup:
    """Follows a backup with WatchBackup until it is available or in error."""
    last: pb.Backup | None = None
    request = pb.GetBackupRequest(project_id=project_id, backup_id=backup_id)
    for update in stub.WatchBackup(request, timeout=WAIT_SECONDS):
        last = update
    assert last is not None
    assert last.status in (pb.BACKUP_STATUS_AVAILABLE, pb.BACKUP_STATUS_ERROR), last
    return last


def backup(
    stub: RegionNodeStub,
    server_id: str,
    disk_indexes: list[int] | None = None,
    project_id: str = "",
) -> pb.Backup:
    """Takes a backup and waits until it is available."""
    created = stub.CreateBackup(
        pb.CreateBackupRequest(
            project_id=project_id, server_id=server_id, disk_indexes=disk_indexes or []
        ),
        timeout=30,
    )
    done = wait_backup(stub, created.backup_id, project_id)
    assert done.status == pb.BACKUP_STATUS_AVAILABLE, done.error_reason
    return done


def wait_server(stub: RegionNodeStub, server_id: str, project_id: str = "") -> pb.Server:
    """Follows a server with WatchServer until it is active or in error."""
    last: pb.Server | None = None
    request = pb.GetServerRequest(project_id=project_id, server_id=server_id)
    for update in stub.WatchServer(request, timeout=WAIT_SECONDS):
        last = update
    assert last is not None
    assert last.status == pb.SERVER_STATUS_ACTIVE, last.error_reason
    return last


def server_from_backup(stub: RegionNodeStub, backup_id: str, project_id: str = "") -> pb.Server:
    image = stub.CreateImage(
        pb.CreateImageRequest(project_id=project_id, backup_id=backup_id), timeout=30
    )
    created = stub.CreateServer(
        pb.CreateServerRequest(project_id=project_id, image_id=image.image_id), timeout=30
    )
    return wait_server(stub, created.server_id, project_id)


def restore(stub: RegionNodeStub, backup_id: str, project_id: str = "") -> pb.Server:
    server = stub.RestoreBackup(
        pb.RestoreBackupRequest(project_id=project_id, backup_id=backup_id), timeout=30
    )
    return wait_server(stub, server.server_id, project_id)


def allocated_bytes(path: object) -> int:
    """Blocks allocated under a directory (sparse files count what they really use)."""
    from pathlib import Path

    total = 0
    for entry in Path(str(path)).rglob("*"):
        if entry.is_file():
            total += entry.stat().st_blocks * 512
    return total


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """Runs a call that must be refused and returns its status code and details. A streaming
    answer is drained, so that a refusal that comes with (or instead of) the first message is
    seen."""
    try:
        answer = call()
        if isinstance(answer, Iterator):
            for _ in answer:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call was accepted; it should have been refused")


def _pages(fetch: Callable[[str], tuple[list[T], str]], max_pages: int = 1000) -> list[T]:
    items: list[T] = []
    token = ""
    for _ in range(max_pages):
        page, token = fetch(token)
        items += page
        if not token:
            return items
    raise AssertionError(f"more than {max_pages} pages")


def all_servers(stub: RegionNodeStub, project_id: str = "") -> list[pb.Server]:
    def fetch(token: str) -> tuple[list[pb.Server], str]:
        answer = stub.ListServers(
            pb.ListServersRequest(project_id=project_id, page_size=1000, page_token=token),
            timeout=30,
        )
        return list(answer.servers), answer.next_page_token

    return _pages(fetch)


def all_backups(stub: RegionNodeStub, project_id: str = "", server_id: str = "") -> list[pb.Backup]:
    def fetch(token: str) -> tuple[list[pb.Backup], str]:
        answer = stub.ListBackups(
            pb.ListBackupsRequest(
                project_id=project_id, server_id=server_id, page_size=1000, page_token=token
            ),
            timeout=30,
        )
        return list(answer.backups), answer.next_page_token

    return _pages(fetch)


def all_images(stub: RegionNodeStub, project_id: str = "") -> list[pb.Image]:
    def fetch(token: str) -> tuple[list[pb.Image], str]:
        answer = stub.ListImages(
            pb.ListImagesRequest(project_id=project_id, page_size=1000, page_token=token),
            timeout=30,
        )
        return list(answer.images), answer.next_page_token

    return _pages(fetch)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Polls `predicate` until it holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not {what} after {timeout:.0f}s")
        time.sleep(interval)


def settled_backup(node: RegionNode, backup_id: str, timeout: float = 60.0) -> Any:
    """A backup of a node's domain (in this process) once it is no longer being taken."""
    from region_node.models import BackupStatus

    deadline = time.monotonic() + timeout
    while node.backups.get("", backup_id).status == BackupStatus.CREATING:
        assert time.monotonic() < deadline, "the backup never ended"
        time.sleep(0.01)
    return node.backups.get("", backup_id)


def manifest_end(parts: Iterable[pb.ManifestPart]) -> pb.CreateReplicaRequest:
    """CreateReplica's last message: the count of the entries the parts held."""
    return pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=sum(len(p.entries) for p in parts)))
