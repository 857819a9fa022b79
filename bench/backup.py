"""Benchmark of one region node's backup path: full backup, incremental backup after a 1%
rewrite, and a restore (a server created from an image of the full backup), each measured
against `cp` + `sync` of the same amount of data on the same filesystem in the same run.

Run by `make bench`; `--size-mib 64` makes a quick check. The last line printed is one JSON
object with the figures. MB = 10^6 bytes. The page cache is left warm throughout (nothing is
dropped, as that would disturb the other users of a shared machine), but every timed step
starts with no dirty pages (`sync` first), so writeback of earlier steps is not charged to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc

from csbs.processes import ProcessFailed
from csbs.v1 import common_pb2, region_node_pb2_grpc
from csbs.v1 import region_node_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Run as a script, only bench/ is on the path; the test harness is not an installed package.
    sys.path.insert(0, str(REPO))

from tests.harness import Cluster, ProcessHandle, write_cluster_config  # noqa: E402

MIB = 1 << 20
WRITE_PIECE = 4 * MIB  # the largest WriteDisk message the contract allows
MB = 1e6
REGION_ID = "cn-north-4"
BENCH_REGION: dict[str, Any] = {
    "id": REGION_ID,
    "name": "Benchmark region",
    "accepts_replication": False,
    "projects": [
        {"id": f"{REGION_ID}_default", "name": REGION_ID, "account": "default", "main": True},
    ],
}
UNARY_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.02
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

M = TypeVar("M")


class BenchError(Exception):
    """The benchmark cannot go on; the message says which step and why."""


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


# ---------------------------------------------------------------------------------------------
# Following long operations to their end
# ---------------------------------------------------------------------------------------------


def follow(
    watch: Callable[[], Iterable[M]],
    get: Callable[[], M],
    finished: Callable[[M], bool],
    use_watch: bool,
    timeout: float,
    what: str,
) -> M:
    """Returns the first state for which `finished` is true (it raises on a failed state),
    from the Watch stream if there is one, else by polling every 20 ms."""
    deadline = time.monotonic() + timeout
    if use_watch:
        try:
            for state in watch():
                if finished(state):
                    return state
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise BenchError(f"{what} did not finish within {timeout:.0f} s") from exc
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            progress(f"watching {what} is not implemented: polling instead")
    while True:
        state = get()
        if finished(state):
            return state
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not finish within {timeout:.0f} s: {state}")
        time.sleep(POLL_INTERVAL_S)


def backup_finished(backup: pb.Backup) -> bool:
    if backup.status == pb.BACKUP_STATUS_ERROR:
        raise BenchError(f"backup {backup.backup_id} went to ERROR: {backup.error_reason}")
    return backup.status == pb.BACKUP_STATUS_AVAILABLE


def server_finished(server: pb.Server) -> bool:
    if server.status == pb.SERVER_STATUS_ERROR:
        raise BenchError(f"server {server.server_id} went to ERROR: {server.error_reason}")
    return server.status == pb.SERVER_STATUS_ACTIVE


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    data_bytes: int  # what MB/s is computed over
    node_cpu_s: float = float("nan")
    stored_bytes: int | None = None
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.data_bytes / MB / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Results:
    size_bytes: int
    steps: list[Step] = field(default_factory=list)
    cp_runs: list[Step] = field(default_factory=list)
    full: pb.Backup | None = None
    incremental: pb.Backup | None = None
    rewritten_bytes: int = 0
    verified_offsets: list[int] = field(default_factory=list)
    node_peak_rss_mb: float = float("nan")
    follow_mode: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.size = args.size_mib * MIB
        self.use_watch = args.follow == "watch"
        self.timeout = float(args.timeout)
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.results = Results(size_bytes=self.size, follow_mode=args.follow)
        self.digests: list[bytes] = []  # sha256 of each MiB of the disk as first written
        self.rewritten: list[int] = []  # MiB indexes rewritten after the full backup
        self.cluster: Cluster | None = None
        self.node: ProcessHandle | None = None
        self.stub: region_node_pb2_grpc.RegionNodeStub | None = None
        self.peer_src = workdir / "peer-src.bin"
        self.peer_dst = workdir / "peer-dst.bin"

    # -- helpers ------------------------------------------------------------------------------

    @property
    def rpc(self) -> region_node_pb2_grpc.RegionNodeStub:
        assert self.stub is not None
        return self.stub

    def node_cpu(self) -> float:
        return cpu_seconds(self.node.pid) if self.node is not None else float("nan")

    def wait_backup(self, backup: pb.Backup) -> pb.Backup:
        request = pb.GetBackupRequest(backup_id=backup.backup_id)
        if backup_finished(backup):
            return backup
        done: pb.Backup = follow(
            lambda: self.rpc.WatchBackup(request, timeout=self.timeout),
            lambda: self.rpc.GetBackup(request, timeout=UNARY_TIMEOUT_S),
            backup_finished,
            self.use_watch,
            self.timeout,
            f"backup {backup.backup_id}",
        )
        return done

    def wait_server(self, server: pb.Server) -> pb.Server:
        request = pb.GetServerRequest(server_id=server.server_id)
        if server_finished(server):
            return server
        active: pb.Server = follow(
            lambda: self.rpc.WatchServer(request, timeout=self.timeout),
            lambda: self.rpc.GetServer(request, timeout=UNARY_TIMEOUT_S),
            server_finished,
            self.use_watch,
            self.timeout,
            f"server {server.server_id}",
        )
        return active

    def write_disk(self, requests: Iterator[pb.WriteDiskRequest], expected: int) -> None:
        reply = self.rpc.WriteDisk(requests, timeout=self.timeout)
        if reply.bytes_written != expected:
            raise BenchError(
                f"WriteDisk acknowledged {reply.bytes_written} bytes, {expected} were sent"
            )

    def read_mib(self, server_id: str, index: int) -> bytes:
        request = pb.ReadDiskRequest(
            server_id=server_id, disk_index=0, offset=index * MIB, length=MIB
        )
        data = bytearray()
        for part in self.rpc.ReadDisk(request, timeout=UNARY_TIMEOUT_S):
            if part.offset != index * MIB + len(data):
                raise BenchError(
                    f"ReadDisk of MiB {index} answered offset {part.offset}, "
                    f"expected {index * MIB + len(data)}"
                )
            data += part.data
        if len(data) != MIB:
            raise BenchError(f"ReadDisk of MiB {index} returned {len(data)} bytes, not {MIB}")
        return bytes(data)

    # -- the peer -----------------------------------------------------------------------------

    def write_peer_source(self) -> None:
        with self.peer_src.open("wb") as f:
            for offset in range(0, self.size, WRITE_PIECE):
                f.write(os.urandom(min(WRITE_PIECE, self.size - offset)))
            f.flush()
            os.fsync(f.fileno())

    def peer_cp_sync(self, label: str) -> Step:
        os.sync()
        start = time.perf_counter()
        subprocess.run(["cp", str(self.peer_src), str(self.peer_dst)], check=True)
        copied = time.perf_counter()
        subprocess.run(["sync"], check=True)
        end = time.perf_counter()
        self.peer_dst.unlink()
        step = Step(
            f"cp + sync ({label})",
            end - start,
            self.size,
            note=f"cp {copied - start:.2f} s + sync {end - copied:.2f} s",
        )
        self.results.cp_runs.append(step)
        self.results.steps.append(step)
        progress(f"{step.name}: {step.seconds:.2f} s, {step.mb_s:.0f} MB/s ({step.note})")
        return step

    # -- the region node ----------------------------------------------------------------------

    def start_node(self) -> None:
        config_path = write_cluster_config(self.workdir, regions=[BENCH_REGION])
        self.cluster = Cluster(
            config_path, ready_timeout=STARTUP_TIMEOUT_S, stop_timeout=STOP_TIMEOUT_S
        )
        self.node = self.cluster.node(REGION_ID)
        self.cluster.start()
        progress(f"region node pid {self.node.pid} serving at {self.node.address}")
        self.stub = region_node_pb2_grpc.RegionNodeStub(self.cluster.channel(REGION_ID))

    def create_and_fill_server(self) -> str:
        server = self.rpc.CreateServer(
            pb.CreateServerRequest(
                name="bench-source",
                server_type=common_pb2.SERVER_TYPE_ECS,
                disks=[pb.DiskSpec(size_bytes=self.size)],
            ),
            timeout=UNARY_TIMEOUT_S,
        )
        server = self.wait_server(server)
        server_id = server.server_id

        def pieces() -> Iterator[pb.WriteDiskRequest]:
            for offset in range(0, self.size, WRITE_PIECE):
                data = os.urandom(min(WRITE_PIECE, self.size - offset))
                view = memoryview(data)
                self.digests.extend(
                    hashlib.sha256(view[i : i + MIB]).digest() for i in range(0, len(data), MIB)
                )
                yield pb.WriteDiskRequest(
                    server_id=server_id, disk_index=0, offset=offset, data=data
                )

        cpu = self.node_cpu()
        start = time.perf_counter()
        self.write_disk(pieces(), self.size)
        step = Step(
            "fill disk (WriteDisk, 4 MiB messages)",
            time.perf_counter() - start,
            self.size,
            self.node_cpu() - cpu,
            note="not a backup figure",
        )
        self.results.steps.append(step)
        progress(f"{step.name}: {step.seconds:.2f} s, {step.mb_s:.0f} MB/s")
        return server_id

    def backup(self, server_id: str, label: str) -> pb.Backup:
        os.sync()
        cpu = self.node_cpu()
        start = time.perf_counter()
        created = self.rpc.CreateBackup(
            pb.CreateBackupRequest(server_id=server_id, name=f"bench-{label}"),
            timeout=UNARY_TIMEOUT_S,
        )
        done = self.wait_backup(created)
        step = Step(
            f"{label} backup",
            time.perf_counter() - start,
            self.size,
            self.node_cpu() - cpu,
            stored_bytes=done.bytes_stored,
            note=f"read {done.bytes_read / MB:.1f} MB",
        )
        self.results.steps.append(step)
        progress(
            f"{step.name} {done.backup_id}: {step.seconds:.2f} s, "
            f"read {done.bytes_read} B, stored {done.bytes_stored} B"
        )
        return done

    def rewrite_one_percent(self, server_id: str) -> None:
        mibs = self.size // MIB
        count = max(1, round(mibs / 100))
        indexes = sorted(self.rng.sample(range(mibs), count))
        self.rewritten = indexes

        def extents() -> Iterator[pb.WriteDiskRequest]:
            for index in indexes:
                yield pb.WriteDiskRequest(
                    server_id=server_id, disk_index=0, offset=index * MIB, data=os.urandom(MIB)
                )

        start = time.perf_counter()
        self.write_disk(extents(), count * MIB)
        self.results.rewritten_bytes = count * MIB
        progress(
            f"rewrote {count} MiB extents at MiB {indexes} in {time.perf_counter() - start:.2f} s"
        )

    def restore(self, full: pb.Backup) -> str:
        image = self.rpc.CreateImage(
            pb.CreateImageRequest(backup_id=full.backup_id, name="bench-image"),
            timeout=UNARY_TIMEOUT_S,
        )
        if image.status != pb.IMAGE_STATUS_AVAILABLE:
            raise BenchError(f"image {image.image_id} is not AVAILABLE: {image}")
        os.sync()
        cpu = self.node_cpu()
        start = time.perf_counter()
        created = self.rpc.CreateServer(
            pb.CreateServerRequest(name="bench-restored", image_id=image.image_id),
            timeout=UNARY_TIMEOUT_S,
        )
        server = self.wait_server(created)
        step = Step(
            "restore (server from image)",
            time.perf_counter() - start,
            self.size,
            self.node_cpu() - cpu,
            note=f"first status {pb.ServerStatus.Name(created.status)}",
        )
        self.results.steps.append(step)
        progress(f"{step.name} {server.server_id}: {step.seconds:.2f} s, {step.mb_s:.0f} MB/s")
        sizes = [d.size_bytes for d in server.disks]
        if sizes != [self.size]:
            raise BenchError(
                f"server {server.server_id} from image {image.image_id} has disks "
                f"of {sizes} bytes, expected [{self.size}]"
            )
        return server.server_id

    def verify(self, server_id: str) -> None:
        """Three 1 MiB ranges of the restored server must hold what the full backup saw. The
        first is a rewritten extent, so that an image of the current disk would fail."""
        mibs = self.size // MIB
        others = [i for i in range(mibs) if i != self.rewritten[0]]
        indexes = [self.rewritten[0], *self.rng.sample(others, min(2, len(others)))]
        for index in indexes:
            digest = hashlib.sha256(self.read_mib(server_id, index)).digest()
            if digest != self.digests[index]:
                raise BenchError(
                    f"restored server {server_id}: MiB {index} differs from what "
                    "was written before the full backup"
                )
        self.results.verified_offsets = [i * MIB for i in indexes]
        progress(f"restored data verified at MiB {indexes}")

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> Results:
        self.start_node()  # first, so that a node that cannot start fails fast
        progress(f"writing the {self.size / MB:.0f} MB peer file")
        self.write_peer_source()
        self.peer_cp_sync("before")
        server_id = self.create_and_fill_server()
        self.results.full = self.backup(server_id, "full")
        self.rewrite_one_percent(server_id)
        self.results.incremental = self.backup(server_id, "incremental")
        restored_id = self.restore(self.results.full)
        self.verify(restored_id)
        self.peer_cp_sync("after")
        assert self.node is not None
        # VmHWM, which the harness gives in MiB.
        self.results.node_peak_rss_mb = self.node.peak_rss_mb() * MIB / MB
        return self.results

    def stop(self) -> None:
        """Stops the node (SIGTERM, then SIGKILL) and closes the channel."""
        if self.cluster is not None:
            self.cluster.stop()


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def summarize(results: Results) -> dict[str, Any]:
    assert results.full is not None and results.incremental is not None
    by_name = {step.name: step for step in results.steps}
    full = by_name["full backup"]
    incremental = by_name["incremental backup"]
    restore = by_name["restore (server from image)"]
    cp_runs = [step.mb_s for step in results.cp_runs]
    cp = statistics.median(cp_runs)  # of two runs, the mean
    fill = next(step for step in results.steps if step.name.startswith("fill"))
    return {
        "size_bytes": results.size_bytes,
        "full_backup_s": round(full.seconds, 3),
        "full_backup_mb_s": round(full.mb_s, 1),
        "full_stored_bytes": results.full.bytes_stored,
        "full_read_bytes": results.full.bytes_read,
        "cp_sync_mb_s": round(cp, 1),
        "cp_sync_mb_s_runs": [round(x, 1) for x in cp_runs],
        "full_vs_cp": round(full.mb_s / cp, 3),
        "incremental_backup_s": round(incremental.seconds, 3),
        "incremental_vs_full_time": round(incremental.seconds / full.seconds, 3),
        "rewritten_bytes": results.rewritten_bytes,
        "incremental_stored_bytes": results.incremental.bytes_stored,
        "incremental_read_bytes": results.incremental.bytes_read,
        "incremental_stored_vs_rewritten": round(
            results.incremental.bytes_stored / results.rewritten_bytes, 3
        ),
        "restore_s": round(restore.seconds, 3),
        "restore_mb_s": round(restore.mb_s, 1),
        "restore_vs_cp": round(restore.mb_s / cp, 3),
        "fill_mb_s": round(fill.mb_s, 1),
        "node_cpu_s": {
            "fill": round(fill.node_cpu_s, 2),
            "full_backup": round(full.node_cpu_s, 2),
            "incremental_backup": round(incremental.node_cpu_s, 2),
            "restore": round(restore.node_cpu_s, 2),
        },
        "node_peak_rss_mb": round(results.node_peak_rss_mb, 1),
        "verified_offsets": results.verified_offsets,
        "follow": results.follow_mode,
    }


def print_report(results: Results, summary: dict[str, Any]) -> None:
    print(
        f"csbs-sim backup benchmark: one region node, one ECS server, "
        f"{results.size_bytes // MIB} MiB system disk of random data (MB = 10^6 bytes)"
    )
    print()
    header = f"{'step':<40} {'seconds':>8} {'MB/s':>8} {'stored MB':>10} {'node CPU':>9}  note"
    print(header)
    print("-" * len(header))
    for step in results.steps:
        stored = f"{step.stored_bytes / MB:.2f}" if step.stored_bytes is not None else ""
        cpu = f"{step.node_cpu_s:.2f} s" if step.node_cpu_s == step.node_cpu_s else ""
        print(
            f"{step.name:<40} {step.seconds:>8.2f} {step.mb_s:>8.0f} {stored:>10} "
            f"{cpu:>9}  {step.note}"
        )
    print()
    runs = ", ".join(f"{x:.0f}" for x in summary["cp_sync_mb_s_runs"])
    rows = [
        ("cp + sync, median of runs", f"{summary['cp_sync_mb_s']:.0f} MB/s (runs: {runs})"),
        ("full backup / cp + sync", f"{summary['full_vs_cp']:.2f}"),
        ("restore / cp + sync", f"{summary['restore_vs_cp']:.2f}"),
        ("incremental time / full time", f"{summary['incremental_vs_full_time']:.3f}"),
        ("rewritten", f"{summary['rewritten_bytes'] / MB:.2f} MB"),
        ("stored by the full backup", f"{summary['full_stored_bytes'] / MB:.2f} MB"),
        (
            "stored by the incremental backup",
            f"{summary['incremental_stored_bytes'] / MB:.2f} MB "
            f"({summary['incremental_stored_vs_rewritten']:.2f} x rewritten)",
        ),
        ("node peak RSS (VmHWM)", f"{summary['node_peak_rss_mb']:.0f} MB"),
        ("restored data checked at offsets", ", ".join(map(str, summary["verified_offsets"]))),
    ]
    print_summary(rows, summary)


def print_summary(rows: list[tuple[str, str]], summary: dict[str, Any]) -> None:
    """The closing lines every benchmark prints: aligned rows, then its figures as one JSON
    object on the last line."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()
    print(json.dumps(summary, sort_keys=True), flush=True)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--size-mib",
        type=int,
        default=1024,
        help="system disk size and peer file size in MiB (default 1024)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=20240601,
        help="seed of the choice of rewritten and verified extents",
    )
    parser.add_argument(
        "--follow",
        choices=["watch", "poll"],
        default="watch",
        help="follow operations with the Watch streams or GetX every 20 ms",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds any one step may take"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the bench directory (config, node log, data) at the end",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 4:
        parser.error("--size-mib must be at least 4")
    return args


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the node is stopped and the directory removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # On the repo's filesystem, so that the peer copies where the node stores.
    (REPO / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=REPO / "var"))
    bench = Bench(args, workdir)
    try:
        results = bench.run()
    except (BenchError, ProcessFailed, grpc.RpcError, subprocess.CalledProcessError) as exc:
        progress(f"FAILED: {exc}")
        if not args.keep:
            progress("the bench directory (config, node log, data) is removed; --keep keeps it")
        if bench.node is not None and not isinstance(exc, BenchError | ProcessFailed):
            progress(f"region node log tail ({bench.node.log_path}):\n{bench.node.log_tail()}")
        return 1
    finally:
        bench.stop()
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(results, summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
