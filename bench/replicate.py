"""Benchmark of cross-region replication (M1) through the coordinator: a full replication of a
backup of a disk of random data, and an incremental one after 1% of the disk was rewritten,
each measured against rsync (full copy, then delta transfer) and `restic copy` of the same data
on the same filesystem in the same run.

Run by `make bench`; `--size-mib 128` makes a quick check. The last line printed is one JSON
object with the figures. MB = 10^6 bytes. A missing rsync or restic is installed with apt-get;
if that fails, its figures are null. As in bench/backup.py, the page cache is left warm but
every timed step starts with no dirty pages (`sync` first), and every timed copy ends with its
data on disk: the peers' copies are followed by `sync`, the nodes fsync what they store. The
peers read a file that is still cached, while the source node reads its packs from disk (its
backup dropped them from the page cache); the report shows what each node read and wrote.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from csbs.processes import ProcessFailed
from csbs.v1 import common_pb2, coordinator_pb2_grpc
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1 import region_node_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # Run as a script, only bench/ is on the path; the test harness is not an installed package.
    sys.path.insert(0, str(REPO))

# bench/backup.py, next to this file: its error, progress line, CPU reading and follow loop.
from backup import BenchError, cpu_seconds, follow, print_summary, progress  # noqa: E402
from limited_link import LimitedLink, replicate_over_limited_link  # noqa: E402

from tests.harness import (  # noqa: E402
    DEFAULT_REGIONS,
    Cluster,
    ProcessHandle,
    write_cluster_config,
)
from tests.node_helpers import backup as take_backup  # noqa: E402
from tests.node_helpers import make_server, read, server_from_backup, wait_server  # noqa: E402

MIB = 1 << 20
MB = 1e6
WRITE_PIECE = 4 * MIB  # the largest WriteDisk message the contract allows
SOURCE = "cn-north-4"
TARGET = "cn-east-3"
TARGET_PROJECT = f"{TARGET}_default"  # the main project, where a replica lands by default (P3)
# A third region, made to accept replication, for the limited-link figure (issue 13).
THIRD = "cn-south-1"
REGIONS = [
    {**r, "accepts_replication": True}
    for r in DEFAULT_REGIONS
    if r["id"] in (SOURCE, TARGET, THIRD)
]
UNARY_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
RESTIC_PASSWORD = "bench"
PEER_TOOLS = ("rsync", "restic")


def children_cpu() -> float:
    """User + system CPU of every child process waited for so far (rsync's own children too)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def storage_io(pid: int) -> tuple[int, int]:
    """Bytes a process has made the storage layer read and write so far (/proc/<pid>/io):
    a read served by the page cache counts nothing."""
    try:
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    except OSError:
        return 0, 0
    figures = dict(line.split(": ", 1) for line in lines)
    return int(figures.get("read_bytes", 0)), int(figures.get("write_bytes", 0))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# The peers' tools
# ---------------------------------------------------------------------------------------------


def _apt_get(*args: str) -> bool:
    command = ["apt-get", *args]
    progress(f"running: {' '.join(command)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        progress(f"apt-get cannot run: {exc}")
        return False
    if done.returncode != 0:
        progress(
            f"apt-get {args[0]} failed ({done.returncode}):\n{tail(done.stdout + done.stderr)}"
        )
    return done.returncode == 0


def ensure_tools(names: Sequence[str]) -> dict[str, str | None]:
    """The path of each tool, installed with apt-get if missing (after `apt-get update` if the
    first try fails); None for a tool that cannot be had."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        progress(f"not installed: {', '.join(missing)}")
        if not _apt_get("install", "-y", *missing):
            progress("the install failed: updating the package lists and trying again")
            if _apt_get("update"):
                _apt_get("install", "-y", *missing)
    found = {name: shutil.which(name) for name in names}
    for name in missing:
        if found[name] is None:
            progress(
                f"WARNING: {name} could not be installed; its peer figures are reported as null"
            )
        else:
            progress(f"installed {name}: {found[name]}")
    return found


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    data_bytes: int  # what MB/s is computed over
    sent_bytes: int | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # process → CPU seconds in the step
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.data_bytes / MB / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Results:
    size_bytes: int
    tools: dict[str, str | None]
    steps: dict[str, Step] = field(default_factory=dict)
    full_job: cpb.ReplicationJob | None = None
    incremental_job: cpb.ReplicationJob | None = None
    extents: list[int] = field(default_factory=list)  # offsets of the rewritten extents
    rewritten_bytes: int = 0
    rsync_delta_literal_bytes: int | None = None
    verified_offsets: list[int] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    storage_io: dict[str, dict[str, int]] = field(default_factory=dict)  # replication → bytes
    limited_link: LimitedLink | None = None


def timed_command(
    name: str,
    commands: Sequence[Sequence[str]],
    data_bytes: int,
    env: dict[str, str] | None = None,
) -> tuple[Step, list[str]]:
    """Runs the commands one after another, then `sync`, timed together from a start with no
    dirty pages; returns the step (MB/s over `data_bytes`) and each command's standard output."""
    os.sync()
    cpu = children_cpu()
    start = time.perf_counter()
    outputs = []
    for command in commands:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(
                f"{name}: {' '.join(command)} exited with {done.returncode}:\n"
                f"{tail(done.stdout + done.stderr)}"
            )
        outputs.append(done.stdout)
    copied = time.perf_counter()
    subprocess.run(["sync"], check=True)
    end = time.perf_counter()
    step = Step(
        name,
        end - start,
        data_bytes,
        cpu_s={"tool": children_cpu() - cpu},
        note=f"copy {copied - start:.2f} s + sync {end - copied:.2f} s",
    )
    return step, outputs


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, tools: dict[str, str | None]):
        self.size = args.size_mib * MIB
        self.align = args.align_kib * 1024
        self.seed: int = args.seed
        self.timeout = float(args.timeout)
        self.rng = random.Random(args.seed)  # extents and verified offsets
        self.workdir = workdir
        self.tools = tools
        self.results = Results(size_bytes=self.size, tools=dict(tools))
        self.cluster: Cluster | None = None
        self.node_stubs: dict[str, pb_grpc.RegionNodeStub] = {}
        self.coordinator: coordinator_pb2_grpc.CoordinatorStub | None = None
        self.peer_src = workdir / "peer-src.bin"
        self.rsync_dir = workdir / "rsync-dst"
        self.restic_a = workdir / "restic-a"
        self.restic_b = workdir / "restic-b"
        self.restic_cache = workdir / "restic-cache"

    # -- helpers ------------------------------------------------------------------------------

    def node(self, region_id: str) -> pb_grpc.RegionNodeStub:
        return self.node_stubs[region_id]

    @property
    def coord(self) -> coordinator_pb2_grpc.CoordinatorStub:
        assert self.coordinator is not None
        return self.coordinator

    def processes(self) -> dict[str, ProcessHandle]:
        assert self.cluster is not None
        return {
            "coordinator": self.cluster.coordinator,
            "source": self.cluster.node(SOURCE),
            "target": self.cluster.node(TARGET),
        }

    def cluster_cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(p.pid) for name, p in self.processes().items()}

    def record(self, step: Step) -> Step:
        self.results.steps[step.name] = step
        sent = f", sent {step.sent_bytes} B" if step.sent_bytes is not None else ""
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in step.cpu_s.items())
        progress(
            f"{step.name}: {step.seconds:.2f} s, {step.mb_s:.0f} MB/s{sent}"
            + (f"; CPU s: {cpu}" if cpu else "")
            + (f" ({step.note})" if step.note else "")
        )
        return step

    def timed_command(
        self, name: str, commands: Sequence[Sequence[str]], env: dict[str, str] | None = None
    ) -> tuple[Step, list[str]]:
        return timed_command(name, commands, self.size, env)

    # -- the source data ----------------------------------------------------------------------

    def write_peer_source(self) -> None:
        """The disk's content, from a seeded PRNG: the peers copy this file and the server's
        disk is filled from it, so both sides move the same bytes."""
        data = random.Random(f"{self.seed}-disk")
        with self.peer_src.open("wb") as f:
            for offset in range(0, self.size, WRITE_PIECE):
                f.write(data.randbytes(min(WRITE_PIECE, self.size - offset)))
            f.flush()
            os.fsync(f.fileno())

    def source_bytes(self, offset: int, length: int) -> bytes:
        with self.peer_src.open("rb") as f:
            return os.pread(f.fileno(), length, offset)

    def choose_extents(self) -> list[int]:
        """1% of the disk in 1 MiB extents at random offsets (multiples of --align-kib): one per
        2 MiB slot at most, so that no two overlap."""
        count = max(1, round(self.size / MIB / 100))
        slots = sorted(self.rng.sample(range(self.size // (2 * MIB)), count))
        return [s * 2 * MIB + self.rng.randrange(0, MIB + 1, self.align) for s in slots]

    # -- the cluster --------------------------------------------------------------------------

    def start_cluster(self) -> None:
        config_path = write_cluster_config(self.workdir, regions=REGIONS)
        self.cluster = Cluster(
            config_path, ready_timeout=STARTUP_TIMEOUT_S, stop_timeout=STOP_TIMEOUT_S
        )
        self.cluster.start(coordinator=True)
        for name, process in self.processes().items():
            progress(f"{name} pid {process.pid} serving at {process.address}")
        for region_id in (SOURCE, TARGET):
            self.node_stubs[region_id] = pb_grpc.RegionNodeStub(self.cluster.channel(region_id))
        self.coordinator = coordinator_pb2_grpc.CoordinatorStub(self.cluster.coordinator_channel())

    def create_and_fill_server(self) -> str:
        stub = self.node(SOURCE)
        created = make_server(
            stub, [self.size // MIB], server_type=common_pb2.SERVER_TYPE_ECS, name="bench-source"
        )
        server_id = wait_server(stub, created.server_id).server_id

        def pieces() -> Iterator[pb.WriteDiskRequest]:
            with self.peer_src.open("rb") as f:
                for offset in range(0, self.size, WRITE_PIECE):
                    yield pb.WriteDiskRequest(
                        server_id=server_id, disk_index=0, offset=offset, data=f.read(WRITE_PIECE)
                    )

        start = time.perf_counter()
        reply = stub.WriteDisk(pieces(), timeout=self.timeout)
        if reply.bytes_written != self.size:
            raise BenchError(f"WriteDisk acknowledged {reply.bytes_written} of {self.size} bytes")
        self.record(
            Step(
                "fill disk (WriteDisk, 4 MiB messages)",
                time.perf_counter() - start,
                self.size,
                note="set-up, not compared",
            )
        )
        return server_id

    def backup(self, server_id: str, label: str) -> pb.Backup:
        os.sync()
        start = time.perf_counter()
        done = take_backup(self.node(SOURCE), server_id)
        self.record(
            Step(
                f"{label} backup",
                time.perf_counter() - start,
                self.size,
                note=f"set-up; stored {done.bytes_stored / MB:.1f} MB",
            )
        )
        return done

    def replicate(self, source_backup: pb.Backup, label: str) -> cpb.ReplicationJob:
        """M1 through the coordinator, timed from ReplicateBackup until the job is SUCCESS."""
        os.sync()
        cpu = self.cluster_cpu()
        processes = self.processes()
        source_io = storage_io(processes["source"].pid)
        target_io = storage_io(processes["target"].pid)
        start = time.perf_counter()
        job = self.coord.ReplicateBackup(
            cpb.ReplicateBackupRequest(
                source_region_id=SOURCE,
                backup_id=source_backup.backup_id,
                target_region_id=TARGET,
                name=f"bench-{label}",
                idempotency_token=f"bench-{label}-{source_backup.backup_id}"[:64],
            ),
            timeout=UNARY_TIMEOUT_S,
        )
        request = cpb.GetReplicationJobRequest(job_id=job.job_id)
        done: cpb.ReplicationJob = follow(
            lambda: self.coord.WatchReplicationJob(request, timeout=self.timeout),
            lambda: self.coord.GetReplicationJob(request, timeout=UNARY_TIMEOUT_S),
            job_finished,
            True,
            self.timeout,
            f"replication job {job.job_id}",
        )
        seconds = time.perf_counter() - start
        after = self.cluster_cpu()
        # What the source read from disk (not from the page cache) and the target wrote.
        read_from_disk = storage_io(processes["source"].pid)[0] - source_io[0]
        written = storage_io(processes["target"].pid)[1] - target_io[1]
        self.results.storage_io[label] = {
            "source_read_bytes": read_from_disk,
            "target_written_bytes": written,
        }
        p = done.progress
        self.record(
            Step(
                f"{label} replication (M1)",
                seconds,
                self.size,
                sent_bytes=p.bytes_sent,
                cpu_s={k: after[k] - cpu[k] for k in after},
                note=(
                    f"{p.chunks_sent} chunks sent, {p.chunks_skipped} skipped "
                    f"({p.bytes_skipped / MB:.1f} MB), {done.attempts} attempt(s); "
                    f"job ran {job_run_seconds(done):.2f} s; source read {read_from_disk / MB:.0f} "
                    f"MB from disk, target wrote {written / MB:.0f} MB"
                ),
            )
        )
        return done

    def rewrite_extents(self, server_id: str) -> None:
        """The same new bytes at the same offsets into the server's disk and the peer file."""
        data = random.Random(f"{self.seed}-rewrite")
        extents = [(offset, data.randbytes(MIB)) for offset in self.results.extents]
        reply = self.node(SOURCE).WriteDisk(
            (
                pb.WriteDiskRequest(server_id=server_id, disk_index=0, offset=o, data=d)
                for o, d in extents
            ),
            timeout=self.timeout,
        )
        if reply.bytes_written != len(extents) * MIB:
            raise BenchError(f"WriteDisk acknowledged {reply.bytes_written} rewritten bytes")
        with self.peer_src.open("r+b") as f:
            for offset, chunk in extents:
                os.pwrite(f.fileno(), chunk, offset)
            os.fsync(f.fileno())
        self.results.rewritten_bytes = len(extents) * MIB
        progress(f"rewrote {len(extents)} extents of 1 MiB at offsets {self.results.extents}")

    # -- the peers ----------------------------------------------------------------------------

    def rsync_full(self) -> None:
        rsync = self.tools["rsync"]
        if rsync is None:
            return
        self.rsync_dir.mkdir()
        step, _ = self.timed_command(
            "rsync -a + sync (full)", [[rsync, "-a", str(self.peer_src), f"{self.rsync_dir}/"]]
        )
        step.sent_bytes = self.size
        self.record(step)

    def rsync_delta(self) -> None:
        rsync = self.tools["rsync"]
        if rsync is None:
            return
        command = [rsync, "-a", "--no-whole-file", "--stats", str(self.peer_src)]
        step, (stats,) = self.timed_command(
            "rsync --no-whole-file + sync (delta)",
            [[*command, f"{self.rsync_dir}/"]],
            env={**os.environ, "LC_ALL": "C"},
        )
        step.sent_bytes = stats_figure(stats, "Total bytes sent")
        literal = stats_figure(stats, "Literal data")
        self.results.rsync_delta_literal_bytes = literal
        step.note += f"; literal data {literal / MB:.2f} MB; effective MB/s over the whole file"
        self.record(step)

    def restic_copy(self) -> None:
        restic = self.tools["restic"]
        if restic is None:
            return
        env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD}
        env["RESTIC_FROM_PASSWORD"] = RESTIC_PASSWORD
        common = [restic, "--cache-dir", str(self.restic_cache), "--quiet"]
        a = ["--repo", str(self.restic_a)]
        b = ["--repo", str(self.restic_b)]
        step, _ = self.timed_command(
            "restic init + backup into repo A",
            [[*common, *a, "init"], [*common, *a, "backup", str(self.peer_src)]],
            env=env,
        )
        step.note += "; set-up"
        self.record(step)
        # The same chunker parameters in B, so that copy moves blobs as they are (restic docs).
        init_b = [*common, *b, "init", "--from-repo", str(self.restic_a), "--copy-chunker-params"]
        self.timed_command("restic init B", [init_b], env=env)
        step, _ = self.timed_command(
            "restic copy A -> B + sync",
            [[*common, *b, "copy", "--from-repo", str(self.restic_a)]],
            env=env,
        )
        step.sent_bytes = directory_bytes(self.restic_b)
        step.note += "; sent = size of repo B"
        self.record(step)

    # -- the check ----------------------------------------------------------------------------

    def verify(self, replica_id: str) -> None:
        """A server made from an image of the incremental replica in the target region must
        hold the source's data now: a rewritten extent (so that a replica of the full backup
        would fail) and two random MiB."""
        stub = self.node(TARGET)
        os.sync()
        start = time.perf_counter()
        server = server_from_backup(stub, replica_id, TARGET_PROJECT)
        self.record(
            Step(
                "server from the replica's image",
                time.perf_counter() - start,
                self.size,
                note=f"in {TARGET}; for the check, not compared",
            )
        )
        mibs = self.size // MIB
        offsets = [self.results.extents[0], *(i * MIB for i in self.rng.sample(range(mibs), 2))]
        for offset in offsets:
            got = read(stub, server.server_id, 0, offset, MIB, TARGET_PROJECT)
            if got != self.source_bytes(offset, MIB):
                raise BenchError(
                    f"server {server.server_id} made from replica {replica_id} in {TARGET}: the "
                    f"MiB at offset {offset} differs from the source disk's"
                )
        self.results.verified_offsets = offsets
        progress(f"replicated data verified at offsets {offsets}")

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> Results:
        self.start_cluster()  # first, so that a cluster that cannot start fails fast
        progress(f"writing the {self.size / MB:.0f} MB source file")
        self.write_peer_source()
        server_id = self.create_and_fill_server()
        full = self.backup(server_id, "full")
        self.results.full_job = self.replicate(full, "full")
        self.rsync_full()
        self.restic_copy()

        self.results.extents = self.choose_extents()
        self.rewrite_extents(server_id)
        incremental = self.backup(server_id, "incremental")
        self.results.incremental_job = self.replicate(incremental, "incremental")
        self.rsync_delta()

        self.verify(self.results.incremental_job.replica_id)
        self.limited_link(full)
        # VmHWM, which the harness gives in MiB.
        self.results.peak_rss_mb = {
            name: p.peak_rss_mb() * MIB / MB for name, p in self.processes().items()
        }
        return self.results

    def limited_link(self, full: pb.Backup) -> None:
        """The full backup again, to a third region, over a link limited to 100 MB/s."""
        assert self.cluster is not None
        admin = coordinator_pb2_grpc.CoordinatorAdminStub(self.cluster.coordinator_channel())
        os.sync()
        result = replicate_over_limited_link(
            self.coord, admin, SOURCE, THIRD, full.backup_id, self.timeout
        )
        self.results.limited_link = result
        self.record(
            Step(
                "full replication over a 100 MB/s link",
                result.seconds,
                result.bytes_sent,
                sent_bytes=result.bytes_sent,
                note=f"to {THIRD}; {result.vs_limit:.3f} x the limit, {result.attempts} attempt(s)",
            )
        )

    def stop(self) -> None:
        """Stops the coordinator and the nodes (SIGTERM, then SIGKILL) and closes the channels."""
        if self.cluster is not None:
            self.cluster.stop()


def job_finished(job: cpb.ReplicationJob) -> bool:
    if job.status == cpb.REPLICATION_JOB_STATUS_FAILED:
        raise BenchError(f"replication job {job.job_id} FAILED: {job.failure_reason}")
    return job.status == cpb.REPLICATION_JOB_STATUS_SUCCESS


def job_run_seconds(job: cpb.ReplicationJob) -> float:
    """From the job's start (its first attempt) to its end, as the coordinator recorded them."""
    return (job.finished_at.ToNanoseconds() - job.started_at.ToNanoseconds()) / 1e9


def stats_figure(stats: str, label: str) -> int:
    """A byte count from `rsync --stats` output ("Total bytes sent: 10,913,117")."""
    match = re.search(rf"^{re.escape(label)}: ([\d,.]+)", stats, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {label!r} in the rsync --stats output:\n{tail(stats)}")
    return int(match.group(1).replace(",", "").replace(".", ""))


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def summarize(results: Results) -> dict[str, Any]:
    assert results.full_job is not None and results.incremental_job is not None
    steps = results.steps
    full = steps["full replication (M1)"]
    incremental = steps["incremental replication (M1)"]
    rsync_full = steps.get("rsync -a + sync (full)")
    rsync_delta = steps.get("rsync --no-whole-file + sync (delta)")
    restic = steps.get("restic copy A -> B + sync")
    rsync_full_mb_s = round(rsync_full.mb_s, 1) if rsync_full else None
    restic_mb_s = round(restic.mb_s, 1) if restic else None
    rsync_delta_s = round(rsync_delta.seconds, 3) if rsync_delta else None
    limited = results.limited_link
    assert limited is not None
    return {
        "size_bytes": results.size_bytes,
        "full_replication_s": round(full.seconds, 3),
        "full_replication_mb_s": round(full.mb_s, 1),
        "full_sent_bytes": full.sent_bytes,
        "rsync_full_s": round(rsync_full.seconds, 3) if rsync_full else None,
        "rsync_full_mb_s": rsync_full_mb_s,
        "restic_copy_s": round(restic.seconds, 3) if restic else None,
        "restic_copy_mb_s": restic_mb_s,
        "full_vs_rsync": _ratio(full.mb_s, rsync_full_mb_s),
        "full_vs_restic_copy": _ratio(full.mb_s, restic_mb_s),
        "incremental_replication_s": round(incremental.seconds, 3),
        "rsync_delta_s": rsync_delta_s,
        "incremental_speedup_vs_rsync": _ratio(rsync_delta_s, incremental.seconds),
        "rewritten_bytes": results.rewritten_bytes,
        "incremental_sent_bytes": incremental.sent_bytes,
        "incremental_skipped_bytes": results.incremental_job.progress.bytes_skipped,
        "incremental_sent_vs_rewritten": _ratio(incremental.sent_bytes, results.rewritten_bytes),
        "rsync_delta_sent_bytes": rsync_delta.sent_bytes if rsync_delta else None,
        "rsync_delta_literal_bytes": results.rsync_delta_literal_bytes,
        "cpu_s": {
            "full_replication": {k: round(v, 2) for k, v in full.cpu_s.items()},
            "incremental_replication": {k: round(v, 2) for k, v in incremental.cpu_s.items()},
        },
        "storage_io_bytes": results.storage_io,
        "peak_rss_mb": {k: round(v, 1) for k, v in results.peak_rss_mb.items()},
        "rewritten_offsets": results.extents,
        "verified_offsets": results.verified_offsets,
        "limited_link_mb_s": round(limited.mb_s, 1),
        "limited_link_vs_limit": round(limited.vs_limit, 3),
        "limited_link_s": round(limited.seconds, 3),
        "peers_missing": [name for name, path in results.tools.items() if path is None],
    }


def print_report(results: Results, summary: dict[str, Any]) -> None:
    print(
        f"csbs-sim replication benchmark: {SOURCE} -> {TARGET} through the coordinator, "
        f"{results.size_bytes // MIB} MiB system disk of random data (MB = 10^6 bytes)"
    )
    print()
    header = (
        f"{'step':<38} {'seconds':>8} {'MB/s':>8} {'sent MB':>9}  "
        f"{'CPU s (coord/src/tgt or tool)':<30} note"
    )
    print(header)
    print("-" * len(header))
    for step in results.steps.values():
        sent = f"{step.sent_bytes / MB:.2f}" if step.sent_bytes is not None else ""
        cpu = "/".join(f"{v:.2f}" for v in step.cpu_s.values())
        print(
            f"{step.name:<38} {step.seconds:>8.2f} {step.mb_s:>8.0f} {sent:>9}  "
            f"{cpu:<30} {step.note}"
        )
    print()

    def times(value: float | None, what: str = "x") -> str:
        return "n/a (peer missing)" if value is None else f"{value:.2f} {what}"

    def mb(value: int | None) -> str:
        return "n/a (peer missing)" if value is None else f"{value / MB:.2f} MB"

    rss = summary["peak_rss_mb"]
    rows = [
        ("full replication", f"{summary['full_replication_mb_s']:.0f} MB/s"),
        ("full replication / rsync -a + sync", times(summary["full_vs_rsync"])),
        ("full replication / restic copy + sync", times(summary["full_vs_restic_copy"])),
        ("incremental replication", f"{summary['incremental_replication_s']:.3f} s"),
        ("rsync delta + sync", times(summary["rsync_delta_s"], "s")),
        (
            "incremental speed-up vs rsync delta",
            times(summary["incremental_speedup_vs_rsync"]),
        ),
        ("rewritten", mb(summary["rewritten_bytes"])),
        (
            "sent by the incremental replication",
            f"{mb(summary['incremental_sent_bytes'])} "
            f"({summary['incremental_sent_vs_rewritten']:.2f} x rewritten; "
            f"{summary['incremental_skipped_bytes'] / MB:.1f} MB already in {TARGET})",
        ),
        ("sent by rsync delta", mb(summary["rsync_delta_sent_bytes"])),
        (
            "peak RSS (VmHWM)",
            f"coordinator {rss['coordinator']:.0f} MB, source {rss['source']:.0f} MB, "
            f"target {rss['target']:.0f} MB",
        ),
        (
            "full replication over a 100 MB/s link",
            f"{summary['limited_link_mb_s']:.1f} MB/s in {summary['limited_link_s']:.2f} s "
            f"({summary['limited_link_vs_limit']:.3f} x the limit)",
        ),
        ("replica data checked at offsets", ", ".join(map(str, summary["verified_offsets"]))),
    ]
    if summary["peers_missing"]:
        rows.append(("MISSING PEERS (null in JSON)", ", ".join(summary["peers_missing"])))
    print_summary(rows, summary)


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
        help="seed of the data, of the rewritten extents and of the verified offsets",
    )
    parser.add_argument(
        "--align-kib",
        type=int,
        default=1024,
        help="rewritten extents start at multiples of this many KiB (default 1024: whole "
        "MiB; 4 puts them across chunk boundaries)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds any one step may take"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the bench directory (config, logs, data) at the end",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 4:
        parser.error("--size-mib must be at least 4")
    if not 1 <= args.align_kib <= 1024 or 1024 % args.align_kib:
        parser.error("--align-kib must divide 1024")
    return args


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the processes are stopped and the directory removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    tools = ensure_tools(PEER_TOOLS)
    # On the repo's filesystem, so that the peers copy where the nodes store.
    (REPO / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=REPO / "var"))
    bench = Bench(args, workdir, tools)
    try:
        results = bench.run()
    except (
        BenchError,
        ProcessFailed,
        grpc.RpcError,
        subprocess.CalledProcessError,
        AssertionError,  # from tests.node_helpers' waits
    ) as exc:
        progress(f"FAILED: {type(exc).__name__}: {exc}")
        if not args.keep:
            progress("the bench directory (config, logs, data) is removed; --keep keeps it")
        if bench.cluster is not None and not isinstance(exc, ProcessFailed):
            for name, process in bench.processes().items():
                progress(f"{name} log tail ({process.log_path}):\n{process.log_tail()}")
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
