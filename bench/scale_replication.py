"""Figures 1 and 2 of the scale benchmark (bench/scale.py): the replication through the
coordinator of a backup of many 64 KiB chunks, with each process's peak RSS and an `rsync -a`
sample to compare with, and `small_chunk_time_ratio`, the same bytes replicated with 64 KiB and
with 1 MiB chunks.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

# The other benchmarks, next to this file: their error, progress line, CPU reading, follow
# loop, replication helpers and peer.
from backup import BenchError, cpu_seconds, follow, progress
from replicate import (
    REGIONS,
    SOURCE,
    TARGET,
    TARGET_PROJECT,
    ensure_tools,
    job_finished,
    job_run_seconds,
    timed_command,
)
from scale_support import (
    KIB,
    LARGE_CHUNK,
    MB,
    MIB,
    RSS_GOAL_MB,
    SMALL_CHUNK,
    UNARY_TIMEOUT_S,
    WRITE_PIECE,
    ScaleBench,
    peak_rss,
    ratio,
    timed,
)

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import coordinator_pb2_grpc
from csbs.v1 import region_node_pb2 as pb


class ReplicationFigures(ScaleBench):
    """Figures 1 and 2: replication at scale, and with small chunks against large ones."""

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
            done, seconds = timed(self.replicate, coordinator, backup.backup_id, label, size)
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

    def replicate(
        self,
        coordinator: coordinator_pb2_grpc.CoordinatorStub,
        backup_id: str,
        label: str,
        size: int,
    ) -> cpb.ReplicationJob:
        """Replicates a backup from SOURCE to TARGET through the coordinator and follows the
        job to its end (whatever its status: the caller says what it needs)."""
        job = coordinator.ReplicateBackup(
            cpb.ReplicateBackupRequest(
                source_region_id=SOURCE,
                backup_id=backup_id,
                target_region_id=TARGET,
                name=f"bench-{label}".replace("_", "-"),
                idempotency_token=f"bench-{label}-{backup_id}"[:64],
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
        return done

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
