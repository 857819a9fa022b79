"""Scale benchmark (issue 12): what each cost grows with. Every figure is measured at two or
three sizes in the same run, each on a fresh cluster of its own, so that the peak resident
memory (VmHWM) it reports is its own:

1. replication through the coordinator of a backup of many 64 KiB chunks (307,200 by default,
   18.75 GiB), with each process's peak RSS after the write, the backup, the replication and
   the check, against `rsync -a` + `sync` of a sample file (1 GiB by default) in the same run;
2. `small_chunk_time_ratio`: the same bytes replicated with 64 KiB and with 1 MiB chunks;
3. `sparse_restore_ratio`: RestoreBackup of the same data onto a disk of its own size and onto
   a sparse disk of 8 TiB (and one of 1 TiB in between);
4. `catalog_growth_ratio`: p50 of GetBackup, ListBackups (a first page of 10) and CreateBackup
   with 10, 1,000 and 10,000 backups in a region;
5. `incremental_growth_ratio`: a backup of one changed chunk on a 64 MiB and on a 64 GiB sparse
   disk holding the same 64 MiB, after 100 earlier such backups;
6. `unary_calls_per_s`: GetRegionInfo and GetBackup from 4 client processes, with p50 and p99.

Run by `make bench` and alone by `make bench-scale` (`make bench-scale SCALE_ARGS=--quick`: small
sizes, about a minute). The last line printed is one JSON object; each figure has its `goal`
(as the issue states it) and `meets_goal`. A missed goal is reported, not an error: the bench
fails only when something breaks (a job or a backup fails, bytes read back differ). MB = 10^6
bytes. Data is unique per 64 KiB (an 8-byte number, then a fixed random block): nothing
dedups, nothing compresses, and no gigabytes of random numbers are made.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc

from csbs.auth import bearer
from csbs.cluster import ProcessFailed
from csbs.rpc import open_channel
from csbs.v1 import common_pb2, coordinator_pb2_grpc
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1 import region_node_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Run as a script, only bench/ is on the path; the test harness is not an installed package.
    sys.path.insert(0, str(REPO))

# The other benchmarks, next to this file: their error, progress line, follow loop, replication
# helpers and peer.
from backup import (  # noqa: E402
    BenchError,
    backup_finished,
    cpu_seconds,
    follow,
    print_summary,
    progress,
    server_finished,
)
from replicate import (  # noqa: E402
    REGIONS,
    SOURCE,
    TARGET,
    TARGET_PROJECT,
    ensure_tools,
    job_finished,
    job_run_seconds,
    timed_command,
)

from tests.harness import (  # noqa: E402
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
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
LIST_PAGE = 10  # ListBackups' page: the smallest catalog, so every level answers a full page
LATE_SAMPLES = 5  # incremental backups timed after the history (and at its start)
CATALOG_WRITERS = 4  # servers backed up side by side to fill the catalog
T = TypeVar("T")
FIGURES = ("replication", "small_chunks", "sparse_restore", "catalog", "incremental", "unary")


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
    incremental_data_mib: int  # data on each disk of the incremental figure (the small disk)
    unary_seconds: float
    unary_clients: int


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
    incremental_data_mib=64,
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
    incremental_data_mib=64,
    unary_seconds=2.0,
    unary_clients=4,
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
# The unary client processes
# ---------------------------------------------------------------------------------------------


def unary_client(
    address: str,
    ca_pem: bytes | None,
    call: str,
    backup_id: str,
    seconds: float,
    ready: Queue[int],
    go: Event,
    out: Queue[bytes],
) -> None:
    """One client process: its own channel, a warm-up, then `call` back to back for `seconds`
    from the moment `go` is set; puts each call's latency (array of doubles) on `out`."""
    channel = open_channel(address, ca_pem)
    stub = pb_grpc.RegionNodeStub(channel)
    metadata = [bearer(ACCOUNT_TOKENS[DEFAULT_ACCOUNT])]
    method: Callable[..., Any]
    request: Any
    if call == "GetBackup":
        method, request = stub.GetBackup, pb.GetBackupRequest(backup_id=backup_id)
    else:
        method, request = stub.GetRegionInfo, pb.GetRegionInfoRequest()
    for _ in range(50):
        method(request, metadata=metadata, timeout=UNARY_TIMEOUT_S)
    ready.put(os.getpid())
    go.wait()
    latencies = array("d")
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        method(request, metadata=metadata, timeout=UNARY_TIMEOUT_S)
        latencies.append(time.perf_counter() - start)
    out.put(latencies.tobytes())
    channel.close()


# ---------------------------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------------------------


class Scale:
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

    # -- 1 and 2: replication ---------------------------------------------------------------------

    def replication(
        self, label: str, chunk_size: int, size: int, first_step_rss: bool
    ) -> dict[str, Any]:
        """On a fresh cluster of two regions and the coordinator: a server's disk of `size`
        bytes written, backed up, the server deleted (its disk file freed), the backup
        replicated through the coordinator (timed), the source backup deleted, and a server
        made from an image of the replica read back at four MiB."""
        # The disk, then its backup, then the replica, each about `size`; two at a time.
        free = shutil.disk_usage(self.workdir).free
        if free < 2.2 * size:
            raise BenchError(
                f"{label}: {size / MB:.0f} MB replicated needs about {2.2 * size / MB:.0f} MB "
                f"free at {self.workdir}; {free / MB:.0f} MB are"
            )
        data = self.data()
        figures: dict[str, Any] = {"chunk_size": chunk_size, "chunks": size // chunk_size}
        rss: dict[str, dict[str, float]] = {}
        with self.cluster(label, REGIONS, chunk_size, coordinator=True) as cluster:
            processes = {
                "coordinator": cluster.coordinator,
                "source": cluster.node(SOURCE),
                "target": cluster.node(TARGET),
            }
            source = self.node(cluster, SOURCE)
            target = self.node(cluster, TARGET, TARGET_PROJECT)
            coordinator = coordinator_pb2_grpc.CoordinatorStub(cluster.coordinator_channel())
            server_id = source.create_server(size, f"bench-{label}")

            progress(f"{label}: writing {size / MB:.0f} MB")
            _, figures["write_s"] = timed(
                lambda: source.write(data.write_requests(server_id, 0, 0, size), size)
            )
            if first_step_rss:
                rss["after_write"] = peak_rss(processes)
            os.sync()
            backup, figures["backup_s"] = timed(source.backup, server_id)
            if backup.bytes_read != size:
                raise BenchError(f"{label}: the backup read {backup.bytes_read} of {size} bytes")
            if first_step_rss:
                rss["after_backup"] = peak_rss(processes)
            source.delete_server(server_id)
            progress(
                f"{label}: written in {figures['write_s']:.1f} s, backed up in "
                f"{figures['backup_s']:.1f} s; replicating {figures['chunks']} chunks"
            )

            os.sync()
            cpu = {name: cpu_seconds(p.pid) for name, p in processes.items()}
            start = time.perf_counter()
            job = coordinator.ReplicateBackup(
                cpb.ReplicateBackupRequest(
                    source_region_id=SOURCE,
                    backup_id=backup.backup_id,
                    target_region_id=TARGET,
                    name=f"bench-{label}".replace("_", "-"),
                    idempotency_token=f"bench-{label}-{backup.backup_id}"[:64],
                ),
                timeout=UNARY_TIMEOUT_S,
            )
            request = cpb.GetReplicationJobRequest(job_id=job.job_id)
            done: cpb.ReplicationJob = follow(
                lambda: coordinator.WatchReplicationJob(request, timeout=self.timeout),
                lambda: coordinator.GetReplicationJob(request, timeout=UNARY_TIMEOUT_S),
                self.reporting(label, size),
                True,
                self.timeout,
                f"replication job {job.job_id}",
            )
            seconds = time.perf_counter() - start
            figures.update(
                status=cpb.ReplicationJobStatus.Name(done.status).removeprefix(
                    "REPLICATION_JOB_STATUS_"
                ),
                attempts=done.attempts,
                seconds=round(seconds, 3),
                job_ran_s=round(job_run_seconds(done), 3),
                mb_s=round(size / MB / seconds, 1),
                bytes=size,
                bytes_sent=done.progress.bytes_sent,
                cpu_s={n: round(cpu_seconds(p.pid) - cpu[n], 2) for n, p in processes.items()},
            )
            rss["after_replication"] = peak_rss(processes)
            progress(
                f"{label}: replicated in {seconds:.1f} s ({figures['mb_s']:.0f} MB/s), "
                f"{done.attempts} attempt(s); peak RSS {rss['after_replication']}"
            )

            # Frees the source's chunks before the check takes the space of a disk.
            figures["delete_source_backup_s"] = source.delete_backup(backup.backup_id)
            image = target.stub.CreateImage(
                pb.CreateImageRequest(project_id=TARGET_PROJECT, backup_id=done.replica_id),
                timeout=UNARY_TIMEOUT_S,
            )
            os.sync()
            created = target.stub.CreateServer(
                pb.CreateServerRequest(project_id=TARGET_PROJECT, image_id=image.image_id),
                timeout=UNARY_TIMEOUT_S,
            )
            restored, figures["check_server_s"] = timed(target.wait_server, created)
            offsets = sorted(
                {0, size - MIB, *(MIB * i for i in self.rng.sample(range(size // MIB), 2))}
            )
            target.check(restored.server_id, data, offsets, f"{label}: the replica's server")
            figures["verified_offsets"] = offsets
            rss["after_check"] = peak_rss(processes)
            progress(
                f"{label}: server from the replica's image in {figures['check_server_s']:.1f} s; "
                f"verified at offsets {offsets}"
            )
        figures["peak_rss_mb"] = rss
        self.peaks[label] = rss["after_check"]
        for key in ("write_s", "backup_s", "delete_source_backup_s", "check_server_s"):
            figures[key] = round(figures[key], 3)
        return figures

    @staticmethod
    def reporting(label: str, size: int) -> Callable[[cpb.ReplicationJob], bool]:
        """job_finished, printing the job's progress every 30 seconds on the way."""
        last = [time.monotonic()]

        def finished(job: cpb.ReplicationJob) -> bool:
            if time.monotonic() - last[0] >= 30:
                last[0] = time.monotonic()
                done = job.progress.bytes_sent + job.progress.bytes_skipped
                progress(f"{label}: {done / MB:.0f} of {size / MB:.0f} MB replicated")
            return job_finished(job)

        return finished

    def replication_at_scale(self) -> None:
        size = self.sizes.chunks * SMALL_CHUNK
        figures = self.replication("replication", SMALL_CHUNK, size, first_step_rss=True)
        peer = self.rsync_sample()
        figures["peer"] = peer
        figures["vs_peer"] = ratio(figures["mb_s"], peer["mb_s"]) if peer else None
        worst = max(v for step in figures["peak_rss_mb"].values() for v in step.values())
        figures["goal"] = f"status SUCCESS, every process <= {RSS_GOAL_MB:.0f} MB peak RSS"
        figures["meets_goal"] = figures["status"] == "SUCCESS" and worst <= RSS_GOAL_MB
        self.figures["replication"] = figures

    def rsync_sample(self) -> dict[str, Any] | None:
        """`rsync -a` + `sync` of a file of --peer-mib between two directories on the
        filesystem the nodes store on (a sample when smaller than the replicated backup)."""
        rsync = ensure_tools(["rsync"])["rsync"]
        if rsync is None:
            return None
        size = self.sizes.peer_mib * MIB
        source, destination = self.workdir / "peer-src.bin", self.workdir / "peer-dst"
        data = self.data()
        with source.open("wb") as f:
            for offset in range(0, size, WRITE_PIECE):
                f.write(data.at(offset, min(WRITE_PIECE, size - offset)))
            os.fsync(f.fileno())
        destination.mkdir()
        try:
            step, _ = timed_command(
                "rsync -a + sync", [[rsync, "-a", str(source), f"{destination}/"]], size
            )
        finally:
            source.unlink()
            shutil.rmtree(destination)
        progress(f"peer: rsync -a + sync of {size / MB:.0f} MB: {step.seconds:.2f} s ({step.note})")
        return {
            "tool": "rsync -a + sync",
            "bytes": size,
            "seconds": round(step.seconds, 3),
            "mb_s": round(step.mb_s, 1),
            "note": step.note,
        }

    def small_chunks(self) -> None:
        size = self.sizes.small_chunk_mib * MIB
        runs = {
            str(chunk): self.replication(f"replication_{chunk // KIB}k", chunk, size, False)
            for chunk in (SMALL_CHUNK, LARGE_CHUNK)
        }
        small, large = runs[str(SMALL_CHUNK)], runs[str(LARGE_CHUNK)]
        value = ratio(small["seconds"], large["seconds"])
        self.figures["small_chunk_time_ratio"] = {
            "value": value,
            "goal": "<= 1.5",
            "meets_goal": value <= 1.5,
            "bytes": size,
            "runs": runs,
        }

    # -- 3: restore of a sparse disk ----------------------------------------------------------

    def sparse_restore(self) -> None:
        data_bytes = self.sizes.restore_mib * MIB
        largest = self.sizes.sparse_disk_gib * GIB
        disks = sorted({data_bytes, max(data_bytes, largest // 8), largest})
        runs = []
        with self.cluster("sparse_restore", ONE_REGION, LARGE_CHUNK) as cluster:
            node = self.node(cluster)
            for disk_bytes in disks:
                data = self.data()
                server_id = node.create_server(disk_bytes, "bench-restore")
                node.write(data.write_requests(server_id, 0, 0, data_bytes), data_bytes)
                backup = node.backup(server_id)
                # A MiB changed after the backup: the restore must bring it back.
                changed = MIB * self.rng.randrange(data_bytes // MIB)
                node.write(self.data().write_requests(server_id, changed, 0, MIB), MIB)
                os.sync()
                start = time.perf_counter()
                restoring = node.stub.RestoreBackup(
                    pb.RestoreBackupRequest(backup_id=backup.backup_id), timeout=UNARY_TIMEOUT_S
                )
                node.wait_server(restoring)
                seconds = time.perf_counter() - start
                node.check(server_id, data, sorted({0, changed}), f"restore of {disk_bytes} B")
                node.delete_server(server_id)
                progress(
                    f"sparse_restore: {size_text(data_bytes)} on a {size_text(disk_bytes)} disk "
                    f"in {seconds:.2f} s"
                )
                runs.append(
                    {
                        "disk_bytes": disk_bytes,
                        "seconds": round(seconds, 3),
                        "mb_s": round(data_bytes / MB / seconds, 1),
                    }
                )
            peaks = self.record_peaks("sparse_restore", {"node": cluster.node(REGION)})
        value = ratio(runs[-1]["seconds"], runs[0]["seconds"])
        self.figures["sparse_restore_ratio"] = {
            "value": value,
            "goal": "<= 1.5",
            "meets_goal": value <= 1.5,
            "data_bytes": data_bytes,
            "runs": runs,
            "peak_rss_mb": peaks,
        }

    # -- 4: the catalog -----------------------------------------------------------------------

    def catalog(self) -> None:
        levels = sorted(set(self.sizes.catalog))
        samples = self.sizes.samples
        results: list[dict[str, Any]] = []
        with self.cluster("catalog", ONE_REGION, LARGE_CHUNK) as cluster:
            node = self.node(cluster)
            data = self.data()
            servers = []
            for k in range(CATALOG_WRITERS):
                server_id = node.create_server(MIB, f"bench-catalog-{k}")
                node.write(data.write_requests(server_id, 0, k * MIB, MIB), MIB)
                servers.append(server_id)
            backup_ids: list[str] = []

            def take(server_id: str, count: int) -> list[str]:
                return [node.backup(server_id).backup_id for _ in range(count)]

            for level in levels:
                need = level - len(backup_ids)
                shares = [
                    need // len(servers) + (k < need % len(servers)) for k in range(len(servers))
                ]
                start = time.perf_counter()
                with ThreadPoolExecutor(len(servers)) as pool:
                    for made in pool.map(take, servers, shares):
                        backup_ids += made
                fill_s = time.perf_counter() - start
                progress(f"catalog: {need} backups taken in {fill_s:.1f} s; {level} in all")
                calls = self.catalog_calls(node, servers, backup_ids, samples)
                results.append(
                    {
                        "backups": level,
                        "fill_s": round(fill_s, 2),
                        "fill_per_s": round(need / fill_s, 1) if fill_s > 0 else None,
                        "p50_ms": {name: ms(p(t, 0.5)) for name, t in calls.items()},
                        "p99_ms": {name: ms(p(t, 0.99)) for name, t in calls.items()},
                    }
                )
                progress(f"catalog: at {level} backups p50 ms {results[-1]['p50_ms']}")
            peaks = self.record_peaks("catalog", {"node": cluster.node(REGION)})
        by_call = {
            name: ratio(results[-1]["p50_ms"][name], results[0]["p50_ms"][name])
            for name in results[0]["p50_ms"]
        }
        value = max(by_call.values())
        self.figures["catalog_growth_ratio"] = {
            "value": value,
            "by_call": by_call,
            "goal": "<= 2 for each call (value: the largest)",
            "meets_goal": value <= 2,
            "levels": results,
            "list_page_size": LIST_PAGE,
            "samples": samples,
            "peak_rss_mb": peaks,
        }

    def catalog_calls(
        self, node: Node, servers: list[str], backup_ids: list[str], samples: int
    ) -> dict[str, list[float]]:
        """Latencies of `samples` calls each: GetBackup of a random backup, ListBackups' first
        page, CreateBackup (the call alone; each such backup is waited for and deleted, so the
        catalog keeps its size)."""
        stub = node.stub
        times: dict[str, list[float]] = {"GetBackup": [], "ListBackups": [], "CreateBackup": []}
        for backup_id in self.rng.choices(backup_ids, k=samples):
            request = pb.GetBackupRequest(backup_id=backup_id)
            _, seconds = timed(stub.GetBackup, request, timeout=10)
            times["GetBackup"].append(seconds)
        listing = pb.ListBackupsRequest(page_size=LIST_PAGE)
        for _ in range(samples):
            answer, seconds = timed(stub.ListBackups, listing, timeout=10)
            if len(answer.backups) != min(LIST_PAGE, len(backup_ids)):
                raise BenchError(f"ListBackups answered {len(answer.backups)} backups")
            times["ListBackups"].append(seconds)
        for k in range(samples):
            created, seconds = timed(node.start_backup, servers[k % len(servers)])
            times["CreateBackup"].append(seconds)
            node.wait_backup(created)
            node.delete_backup(created.backup_id)
        return times

    # -- 5: incremental backups -------------------------------------------------------------

    def incremental(self) -> None:
        sizes = self.sizes
        data_bytes = sizes.incremental_data_mib * MIB
        units = data_bytes // MIB  # the MiB of data each disk holds
        disks = {"small": data_bytes, "large": sizes.incremental_disk_gib * GIB}
        runs: dict[str, dict[str, Any]] = {}
        with self.cluster("incremental", ONE_REGION, LARGE_CHUNK) as cluster:
            node = self.node(cluster)
            servers: dict[str, str] = {}
            where: dict[str, list[int]] = {}  # disk → offset of each MiB of data
            for name, disk_bytes in disks.items():
                data = self.data()
                server_id = servers[name] = node.create_server(disk_bytes, f"bench-{name}")
                stride = disk_bytes // units  # the data spread evenly over the disk
                where[name] = [i * stride for i in range(units)]
                for i, offset in enumerate(where[name]):
                    node.write(data.write_requests(server_id, offset, i * MIB, MIB), MIB)
                os.sync()
                _, seconds = timed(node.backup, server_id)
                runs[name] = {"disk_bytes": disk_bytes, "full_backup_s": round(seconds, 3)}
            # A data set of changes per disk: a chunk one disk's backup stored would otherwise
            # make the other's the cheaper for finding it stored already.
            changes = {name: self.data() for name in disks}
            times: dict[str, list[float]] = {name: [] for name in disks}
            for round_ in range(sizes.history + LATE_SAMPLES):
                for name, server_id in servers.items():  # side by side: the same conditions
                    offset = where[name][round_ % units]
                    changed = changes[name].write_requests(server_id, offset, round_ * MIB, MIB)
                    node.write(changed, MIB)
                    backup, seconds = timed(node.backup, server_id)
                    if backup.bytes_read != MIB:
                        raise BenchError(f"an incremental backup read {backup.bytes_read} bytes")
                    times[name].append(seconds)
                if round_ % 25 == 24:
                    progress(f"incremental: {round_ + 1} backups of each disk")
            peaks = self.record_peaks("incremental", {"node": cluster.node(REGION)})
        for name, run in runs.items():
            first = statistics.median(times[name][:LATE_SAMPLES])
            late = statistics.median(times[name][sizes.history :])
            run.update(first_p50_s=round(first, 4), after_history_p50_s=round(late, 4))
            run["history_growth"] = ratio(late, first)
        value = ratio(runs["large"]["after_history_p50_s"], runs["small"]["after_history_p50_s"])
        self.figures["incremental_growth_ratio"] = {
            "value": value,
            "goal": "<= 2",
            "meets_goal": value <= 2,
            "data_bytes": data_bytes,
            "history": sizes.history,
            "timed_backups": LATE_SAMPLES,
            "runs": runs,
            "peak_rss_mb": peaks,
        }

    # -- 6: unary calls -----------------------------------------------------------------------

    def unary(self) -> None:
        sizes = self.sizes
        by_call: dict[str, dict[str, Any]] = {}
        with self.cluster("unary", ONE_REGION, LARGE_CHUNK) as cluster:
            node = self.node(cluster)
            server_id = node.create_server(MIB, "bench-unary")
            backup_id = node.backup(server_id).backup_id
            process = cluster.node(REGION)
            for call in ("GetRegionInfo", "GetBackup"):
                latencies = self.unary_run(process, call, backup_id)
                seconds = sizes.unary_seconds
                by_call[call] = {
                    "calls": len(latencies),
                    "calls_per_s": round(len(latencies) / seconds, 1),
                    "p50_ms": ms(p(latencies, 0.5)),
                    "p99_ms": ms(p(latencies, 0.99)),
                }
                progress(f"unary: {call} {by_call[call]}")
            peaks = self.record_peaks("unary", {"node": process})
        headline = by_call["GetRegionInfo"]
        self.figures["unary_calls_per_s"] = {
            "value": headline["calls_per_s"],
            "p99_ms": headline["p99_ms"],
            "goal": ">= 1700 calls/s with p99 <= 5 ms (the issue's figures, to keep)",
            "meets_goal": headline["calls_per_s"] >= 1700 and headline["p99_ms"] <= 5,
            "clients": sizes.unary_clients,
            "seconds": sizes.unary_seconds,
            "by_call": by_call,
            "peak_rss_mb": peaks,
        }

    def unary_run(self, process: ProcessHandle, call: str, backup_id: str) -> list[float]:
        context = multiprocessing.get_context("spawn")  # no fork of a process with gRPC threads
        ready: Queue[int] = context.Queue()
        out: Queue[bytes] = context.Queue()
        go = context.Event()
        args = (process.address, process.ca_pem(), call, backup_id, self.sizes.unary_seconds)
        clients = [
            context.Process(target=unary_client, args=(*args, ready, go, out), daemon=True)
            for _ in range(self.sizes.unary_clients)
        ]
        for client in clients:
            client.start()
        try:
            for _ in clients:
                ready.get(timeout=UNARY_TIMEOUT_S)
            go.set()
            latencies: list[float] = []
            for _ in clients:
                latencies += array("d", out.get(timeout=self.sizes.unary_seconds + 60))
        finally:
            for client in clients:
                client.join(timeout=10)
                if client.is_alive():
                    client.kill()
        return latencies

    # -- the run ------------------------------------------------------------------------------

    def run(self, only: Sequence[str]) -> dict[str, Any]:
        steps: dict[str, Callable[[], None]] = {
            "replication": self.replication_at_scale,
            "small_chunks": self.small_chunks,
            "sparse_restore": self.sparse_restore,
            "catalog": self.catalog,
            "incremental": self.incremental,
            "unary": self.unary,
        }
        for name in FIGURES:
            if name in only:
                start = time.perf_counter()
                steps[name]()
                progress(f"{name}: done in {time.perf_counter() - start:.0f} s")
        return self.summary()

    def summary(self) -> dict[str, Any]:
        small = self.figures.get("small_chunk_time_ratio")
        scale = self.figures.get("replication")
        if small is not None and scale is not None:
            # The replication's growth: the same path at the small-chunk figure's size.
            smaller = small["runs"][str(SMALL_CHUNK)]
            scale["growth"] = [
                {k: run[k] for k in ("chunks", "seconds", "mb_s")}
                | {"peak_rss_mb": run["peak_rss_mb"]["after_replication"]}
                for run in (smaller, scale)
            ]
        worst = max((v for peaks in self.peaks.values() for v in peaks.values()), default=0.0)
        return {
            **self.figures,
            "peak_rss_mb": {
                "max": worst,
                "by_figure": self.peaks,
                "goal": f"<= {RSS_GOAL_MB:.0f} for every process in every figure",
                "meets_goal": worst <= RSS_GOAL_MB,
            },
            "sizes": asdict(self.sizes),
            "quick": bool(self.args.quick),
        }


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def print_report(summary: dict[str, Any]) -> None:
    print("csbs-sim scale benchmark (issue 12); MB = 10^6 bytes; goals are the issue's")
    print()
    rows: list[tuple[str, str]] = []

    def goal(figure: dict[str, Any]) -> str:
        return f"goal {figure['goal']}: {'met' if figure['meets_goal'] else 'MISSED'}"

    if (rep := summary.get("replication")) is not None:
        rss = rep["peak_rss_mb"]
        rows.append(
            (
                f"replication of {rep['chunks']} x 64 KiB",
                f"{rep['status']} in {rep['seconds']:.1f} s, {rep['mb_s']:.0f} MB/s, "
                f"{rep['attempts']} attempt(s); {goal(rep)}",
            )
        )
        for step, peaks in rss.items():
            rows.append(
                (f"  peak RSS MB {step}", ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
            )
        for run in rep.get("growth", []):
            rows.append((f"  at {run['chunks']} chunks", f"{run['mb_s']:.0f} MB/s"))
        peer = rep["peer"]
        if peer is not None:
            rows.append(
                (
                    f"  rsync -a + sync of {peer['bytes'] / MB:.0f} MB",
                    f"{peer['mb_s']:.0f} MB/s (replication {rep['vs_peer']:.2f} x that)",
                )
            )
    if (small := summary.get("small_chunk_time_ratio")) is not None:
        runs = small["runs"]
        rows.append(
            (
                "small_chunk_time_ratio",
                f"{small['value']:.2f} (64 KiB {runs[str(SMALL_CHUNK)]['seconds']:.2f} s, "
                f"1 MiB {runs[str(LARGE_CHUNK)]['seconds']:.2f} s); {goal(small)}",
            )
        )
    if (sparse := summary.get("sparse_restore_ratio")) is not None:
        times = ", ".join(
            f"{size_text(r['disk_bytes'])} {r['seconds']:.2f} s" for r in sparse["runs"]
        )
        rows.append(("sparse_restore_ratio", f"{sparse['value']:.2f} ({times}); {goal(sparse)}"))
    if (catalog := summary.get("catalog_growth_ratio")) is not None:
        by_call = ", ".join(f"{k} {v:.2f}" for k, v in catalog["by_call"].items())
        rows.append(
            ("catalog_growth_ratio", f"{catalog['value']:.2f} ({by_call}); {goal(catalog)}")
        )
        for level in catalog["levels"]:
            p50 = ", ".join(f"{k} {v:.2f}" for k, v in level["p50_ms"].items())
            rows.append((f"  p50 ms at {level['backups']} backups", p50))
    if (inc := summary.get("incremental_growth_ratio")) is not None:
        runs = inc["runs"]
        rows.append(
            (
                "incremental_growth_ratio",
                f"{inc['value']:.2f} (after {inc['history']} backups: "
                + ", ".join(
                    f"{size_text(run['disk_bytes'])} disk {run['after_history_p50_s']:.3f} s"
                    for run in runs.values()
                )
                + f"); {goal(inc)}",
            )
        )
    if (unary := summary.get("unary_calls_per_s")) is not None:
        for call, figure in unary["by_call"].items():
            rows.append(
                (
                    f"unary {call} x {unary['clients']} processes",
                    f"{figure['calls_per_s']:.0f} calls/s, p50 {figure['p50_ms']:.2f} ms, "
                    f"p99 {figure['p99_ms']:.2f} ms",
                )
            )
        rows.append(("unary_calls_per_s", goal(unary)))
    rss = summary["peak_rss_mb"]
    rows.append(("largest peak RSS of any process", f"{rss['max']:.0f} MB; {goal(rss)}"))
    print_summary(rows, summary)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (about a minute), for development"
    )
    flags = {
        "chunks": (int, "64 KiB chunks replicated at scale (a multiple of 16)"),
        "small_chunk_mib": (int, "MiB replicated at 64 KiB and at 1 MiB chunks"),
        "peer_mib": (int, "MiB of the rsync sample"),
        "restore_mib": (int, "MiB of data on each disk restored"),
        "sparse_disk_gib": (int, "GiB of the largest sparse disk restored (at most 8192)"),
        "samples": (int, "calls timed per call and catalog size"),
        "history": (int, "incremental backups before the timed ones"),
        "incremental_disk_gib": (int, "GiB of the large disk of the incremental figure"),
        "incremental_data_mib": (int, "MiB of data on each disk of the incremental figure"),
        "unary_seconds": (float, "seconds the unary clients call"),
        "unary_clients": (int, "unary client processes"),
    }
    for name, (kind, text) in flags.items():
        default_full, default_quick = getattr(FULL, name), getattr(QUICK, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"{text} (default {default_full}, --quick {default_quick})",
        )
    parser.add_argument(
        "--catalog",
        default=None,
        help="backups in the region at each catalog measurement, comma-separated (default "
        f"{','.join(map(str, FULL.catalog))}, --quick {','.join(map(str, QUICK.catalog))})",
    )
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"the figures to measure, comma-separated, of {','.join(FIGURES)} (default all)",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the data and choices")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds any one step may take"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the bench directory (configs, logs, data)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    given = {f.name: getattr(args, f.name) for f in fields(Sizes) if f.name != "catalog"}
    sizes = replace(sizes, **{k: v for k, v in given.items() if v is not None})
    if args.catalog is not None:
        sizes = replace(sizes, catalog=tuple(int(x) for x in args.catalog.split(",")))
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(only) - set(FIGURES):
        parser.error(f"--only: no figure {', '.join(sorted(unknown))}")
    args.only = only
    if sizes.chunks < 64 or sizes.chunks % 16:
        parser.error("--chunks must be a multiple of 16 (whole MiB), at least 64")
    if not 1 <= sizes.sparse_disk_gib <= 8192 or sizes.sparse_disk_gib * 1024 < sizes.restore_mib:
        parser.error("--sparse-disk-gib: 1 to 8192, and at least --restore-mib")
    if sizes.incremental_disk_gib * 1024 < sizes.incremental_data_mib:
        parser.error("--incremental-disk-gib must hold --incremental-data-mib")
    if min(sizes.catalog) < 1 or sizes.samples < 1 or sizes.history < LATE_SAMPLES:
        parser.error(f"--catalog sizes and --samples at least 1, --history at least {LATE_SAMPLES}")
    if min(sizes.small_chunk_mib, sizes.peer_mib, sizes.restore_mib) < 4:
        parser.error("--small-chunk-mib, --peer-mib and --restore-mib: at least 4")
    return args, sizes


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the processes are stopped and the directory removed


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # On the repo's filesystem, so that the peer copies where the nodes store.
    (REPO / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=REPO / "var"))
    bench = Scale(args, sizes, workdir)
    start = time.perf_counter()
    try:
        summary = bench.run(args.only)
    except (
        BenchError,
        ProcessFailed,
        grpc.RpcError,
        subprocess.CalledProcessError,
    ) as exc:
        progress(f"FAILED: {type(exc).__name__}: {exc}")
        if not args.keep:
            progress("the bench directory (configs, logs, data) is removed; --keep keeps it")
        return 1
    finally:
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["run_s"] = round(time.perf_counter() - start, 1)
    print_report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
