"""What the scale benchmark's figures share (bench/scale.py runs them): the sizes of a run,
its constants and small arithmetic, the data sets of unique 64 KiB units, the region node driven
with the waits the figures need, each process's peak RSS, and `ScaleBench`, the state of a run
(fresh clusters, seeded data sets, what was measured) that the figure classes extend.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from csbs.processes import ProcessFailed
from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from csbs.v1 import region_node_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Run as a script, only bench/ is on the path; the test harness is not an installed package.
    sys.path.insert(0, str(REPO))

# The other benchmarks, next to this file: their error, progress line, follow loop and region.
from backup import (  # noqa: E402
    BenchError,
    backup_finished,
    follow,
    progress,
    server_finished,
)
from replicate import SOURCE  # noqa: E402

from tests.harness import (  # noqa: E402
    DEFAULT_REGIONS,
    Cluster,
    ProcessHandle,
    write_cluster_config,
)
from tests.node_helpers import read  # noqa: E402

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MB = 1e6
SMALL_CHUNK = 64 * KIB
LARGE_CHUNK = MIB
WRITE_PIECE = 4 * MIB  # the largest WriteDisk message the contract allows
REGION = SOURCE  # the one region of the single-node figures
ONE_REGION = [r for r in DEFAULT_REGIONS if r["id"] == REGION]
UNARY_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
RSS_GOAL_MB = 150.0  # the bound on every process in every figure
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    chunks: int  # 64 KiB chunks of the replication at scale
    small_chunk_mib: int  # bytes replicated at 64 KiB and at 1 MiB chunks
    peer_mib: int  # the rsync sample
    restore_mib: int  # data on each disk of the restore figure
    sparse_disk_gib: int  # the largest sparse disk restored
    catalog: tuple[int, ...]  # backups in the region at each measurement
    samples: int  # calls timed per call and catalog size
    history: int  # incremental backups taken before the timed ones
    incremental_disk_gib: int  # the large disk of the incremental figure
    incremental_small_mib: int  # the small disk of the incremental figure
    find_missing_chunks: int  # 64 KiB chunks of the replica of the find_missing figure
    find_missing_history: int  # backups of that data its account holds, at the second look
    unary_seconds: float
    unary_clients: int
    writers: tuple[int, ...] = (4, 8, 16)  # concurrent WriteDisk streams at each measurement
    writer_mib: int = 512  # bytes each of them writes


FULL = Sizes(
    chunks=307_200,
    small_chunk_mib=1024,
    peer_mib=1024,
    restore_mib=1024,
    sparse_disk_gib=8192,
    catalog=(10, 1000, 10_000),
    samples=100,
    history=100,
    incremental_disk_gib=64,
    incremental_small_mib=64,
    find_missing_chunks=65_536,
    find_missing_history=200,
    unary_seconds=5.0,
    unary_clients=4,
)
QUICK = Sizes(
    chunks=20_000,
    small_chunk_mib=128,
    peer_mib=128,
    restore_mib=64,
    sparse_disk_gib=8,
    catalog=(10, 100),
    samples=30,
    history=20,
    incremental_disk_gib=8,
    incremental_small_mib=64,
    find_missing_chunks=4096,
    find_missing_history=20,
    unary_seconds=2.0,
    unary_clients=4,
    writers=(4, 16),
    writer_mib=64,
)


def mb(value_mib: float) -> float:
    return round(value_mib * MIB / MB, 1)


def p(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of the values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def size_text(size: int) -> str:
    """1 GiB, 8 TiB, 64 MiB."""
    for unit, name in ((1 << 40, "TiB"), (GIB, "GiB"), (MIB, "MiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("inf")


def timed(call: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """What `call(*args, **kwargs)` returned, and the seconds it took."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------


class ChunkData:
    """A data set of unique, incompressible 64 KiB units made cheaply: unit i is the 8-byte
    number (tag << 40 | i) followed by a fixed random block. Write pieces are assembled in one
    buffer reused from piece to piece (a first touch of new memory is slow here)."""

    UNIT = SMALL_CHUNK

    def __init__(self, seed: int, tag: int) -> None:
        self.tag = tag
        self.block = random.Random(f"{seed}-block").randbytes(self.UNIT - 8)
        self._buffer = bytearray()

    def _number(self, index: int) -> int:
        return self.tag << 40 | index

    def at(self, offset: int, length: int) -> bytes:
        """The data set's bytes [offset, offset + length), both multiples of the unit."""
        if offset % self.UNIT or length % self.UNIT:
            raise ValueError(f"{offset}+{length} is not in whole units of {self.UNIT}")
        if len(self._buffer) < length:
            self._buffer = bytearray((b"\0" * 8 + self.block) * (length // self.UNIT))
        first = offset // self.UNIT
        for k in range(length // self.UNIT):
            struct.pack_into(">Q", self._buffer, k * self.UNIT, self._number(first + k))
        return bytes(memoryview(self._buffer)[:length])

    def write_requests(
        self, server_id: str, disk_offset: int, data_offset: int, length: int
    ) -> Iterator[pb.WriteDiskRequest]:
        """WriteDisk messages putting the data set's [data_offset, +length) at disk_offset."""
        for start in range(0, length, WRITE_PIECE):
            size = min(WRITE_PIECE, length - start)
            yield pb.WriteDiskRequest(
                server_id=server_id,
                disk_index=0,
                offset=disk_offset + start,
                data=self.at(data_offset + start, size),
            )


# ---------------------------------------------------------------------------------------------
# Driving a node
# ---------------------------------------------------------------------------------------------


class Node:
    """One region node's stub with the waits the figures need, each bounded by `timeout`."""

    def __init__(self, stub: pb_grpc.RegionNodeStub, timeout: float, project_id: str = ""):
        self.stub = stub
        self.timeout = timeout
        self.project_id = project_id

    def create_server(self, disk_bytes: int, name: str) -> str:
        created = self.stub.CreateServer(
            pb.CreateServerRequest(
                project_id=self.project_id,
                name=name,
                server_type=common_pb2.SERVER_TYPE_ECS,
                disks=[pb.DiskSpec(size_bytes=disk_bytes)],
            ),
            timeout=UNARY_TIMEOUT_S,
        )
        return self.wait_server(created).server_id

    def write(self, requests: Iterator[pb.WriteDiskRequest], expected: int) -> None:
        reply = self.stub.WriteDisk(requests, timeout=self.timeout)
        if reply.bytes_written != expected:
            raise BenchError(f"WriteDisk acknowledged {reply.bytes_written} of {expected} bytes")

    def wait_server(self, server: pb.Server) -> pb.Server:
        if server_finished(server):
            return server
        request = pb.GetServerRequest(project_id=self.project_id, server_id=server.server_id)
        done: pb.Server = follow(
            lambda: self.stub.WatchServer(request, timeout=self.timeout),
            lambda: self.stub.GetServer(request, timeout=UNARY_TIMEOUT_S),
            server_finished,
            True,
            self.timeout,
            f"server {server.server_id}",
        )
        return done

    def start_backup(self, server_id: str) -> pb.Backup:
        backup: pb.Backup = self.stub.CreateBackup(
            pb.CreateBackupRequest(project_id=self.project_id, server_id=server_id),
            timeout=UNARY_TIMEOUT_S,
        )
        return backup

    def wait_backup(self, backup: pb.Backup) -> pb.Backup:
        if backup_finished(backup):
            return backup
        request = pb.GetBackupRequest(project_id=self.project_id, backup_id=backup.backup_id)
        done: pb.Backup = follow(
            lambda: self.stub.WatchBackup(request, timeout=self.timeout),
            lambda: self.stub.GetBackup(request, timeout=UNARY_TIMEOUT_S),
            backup_finished,
            True,
            self.timeout,
            f"backup {backup.backup_id}",
        )
        return done

    def backup(self, server_id: str) -> pb.Backup:
        return self.wait_backup(self.start_backup(server_id))

    def delete_server(self, server_id: str) -> None:
        """Deletes the server and waits until it is gone (its disk file with it)."""
        request = pb.GetServerRequest(project_id=self.project_id, server_id=server_id)
        self.stub.DeleteServer(
            pb.DeleteServerRequest(project_id=self.project_id, server_id=server_id),
            timeout=UNARY_TIMEOUT_S,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                self.stub.GetServer(request, timeout=UNARY_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise
            time.sleep(0.05)
        raise BenchError(f"server {server_id} still exists {self.timeout:.0f} s after its deletion")

    def delete_backup(self, backup_id: str, patience: float = 30.0) -> float:
        """Deletes a backup, waiting out a replication job's hold that is still being released
        (FAILED_PRECONDITION) for up to `patience` seconds; returns the seconds the call that
        deleted it took."""
        request = pb.DeleteBackupRequest(project_id=self.project_id, backup_id=backup_id)
        deadline = time.monotonic() + patience
        while True:
            try:
                return timed(self.stub.DeleteBackup, request, timeout=self.timeout)[1]
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"backup {backup_id} cannot be deleted: {exc.details()}"
                    ) from exc
            time.sleep(0.2)

    def read(self, server_id: str, offset: int, length: int) -> bytes:
        return read(self.stub, server_id, 0, offset, length, self.project_id)

    def check(self, server_id: str, data: ChunkData, offsets: Sequence[int], what: str) -> None:
        """Each MiB at `offsets` of the server's disk must be the data set's at that offset."""
        for offset in offsets:
            if self.read(server_id, offset, MIB) != data.at(offset, MIB):
                raise BenchError(f"{what}: the MiB at offset {offset} is not the data written")


def peak_rss(processes: dict[str, ProcessHandle]) -> dict[str, float]:
    """Each process's VmHWM so far in MB (the harness reads it in MiB)."""
    return {name: mb(process.peak_rss_mb()) for name, process in processes.items()}


# ---------------------------------------------------------------------------------------------
# A run of the scale benchmark
# ---------------------------------------------------------------------------------------------


class ScaleBench:
    """The state every figure shares: the sizes, the seeded data sets, a fresh cluster per
    figure, and the figures and peak RSS measured so far."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.timeout = float(args.timeout)
        self.seed: int = args.seed
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.keep: bool = args.keep
        self.figures: dict[str, dict[str, Any]] = {}
        self.peaks: dict[str, dict[str, float]] = {}  # figure → process → VmHWM MB at its end
        self.tags = iter(range(1, 1 << 20))  # a new data set's tag: no two share a chunk

    def data(self) -> ChunkData:
        return ChunkData(self.seed, next(self.tags))

    @contextlib.contextmanager
    def cluster(
        self,
        name: str,
        regions: Sequence[dict[str, Any]],
        chunk_size: int,
        coordinator: bool = False,
    ) -> Iterator[Cluster]:
        """A fresh cluster in its own directory, stopped at the end (its log tails shown if the
        figure failed) and its data removed unless --keep."""
        directory = self.workdir / name
        config = write_cluster_config(directory, regions=regions, chunk_size=chunk_size)
        cluster = Cluster(config, ready_timeout=STARTUP_TIMEOUT_S, stop_timeout=STOP_TIMEOUT_S)
        progress(f"{name}: starting a cluster with {chunk_size // KIB} KiB chunks")
        try:
            cluster.start(coordinator=coordinator)
            yield cluster
        except BaseException as exc:
            if not isinstance(exc, ProcessFailed | KeyboardInterrupt | SystemExit):
                processes = [*cluster.nodes, *([cluster.coordinator] if coordinator else [])]
                for process in processes:
                    progress(f"{process.name} log tail ({process.log_path}):")
                    progress(process.log_tail())
            raise
        finally:
            cluster.stop()
            if not self.keep:
                shutil.rmtree(directory / "data", ignore_errors=True)

    def node(self, cluster: Cluster, region_id: str = REGION, project_id: str = "") -> Node:
        return Node(pb_grpc.RegionNodeStub(cluster.channel(region_id)), self.timeout, project_id)

    def record_peaks(self, figure: str, processes: dict[str, ProcessHandle]) -> dict[str, float]:
        self.peaks[figure] = peak_rss(processes)
        return self.peaks[figure]
