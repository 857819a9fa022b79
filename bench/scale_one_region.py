"""Figures 3 to 6 of the scale benchmark (bench/scale.py), each on a cluster of one region
node: `sparse_restore_ratio` (a restore onto its own size of disk and onto a sparse 8 TiB one),
`catalog_growth_ratio` (GetBackup, ListBackups and CreateBackup as the catalog grows),
`incremental_growth_ratio` (a backup of one changed chunk on a small and on a large disk after a
history of them), `unary_calls_per_s` (from client processes of their own) and
`concurrent_writes` (the node's peak and idle memory under 4, 8 and 16 WriteDisk streams).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

# bench/backup.py, next to this file: its error and progress line.
from backup import BenchError, progress
from scale_support import (
    GIB,
    LARGE_CHUNK,
    MB,
    MIB,
    ONE_REGION,
    REGION,
    UNARY_TIMEOUT_S,
    Node,
    ScaleBench,
    ms,
    p,
    ratio,
    size_text,
    timed,
)

from csbs.auth import bearer
from csbs.rpc import open_channel
from csbs.v1 import region_node_pb2 as pb
from csbs.v1 import region_node_pb2_grpc as pb_grpc

# scale_support, imported above, has put the repository on the path (the test harness is not an
# installed package).
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, ProcessHandle

LIST_PAGE = 10  # ListBackups' page: the smallest catalog, so every level answers a full page
LATE_SAMPLES = 5  # incremental backups timed after the history (and at its start)
CATALOG_WRITERS = 4  # servers backed up side by side to fill the catalog
MARK_BYTES = 4096  # written at the start of every chunk of the incremental figure's disks
CHANGE_STRIDE = 1031  # chunks between two rounds' changes: each lands on another page (1,024)


def _marks(server_id: str, chunks: int) -> Iterator[pb.WriteDiskRequest]:
    mark = b"\x5a" * MARK_BYTES
    for i in range(chunks):
        yield pb.WriteDiskRequest(server_id=server_id, disk_index=0, offset=i * MIB, data=mark)


def _file_bytes(database: Path) -> int:
    """A SQLite database's bytes on disk, with its write-ahead log."""
    wal = database.with_name(database.name + "-wal")
    return database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


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


class OneRegionFigures(ScaleBench):
    """Figures 3 to 6, each on a fresh cluster of one region node."""

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
        """Both disks are whole: every 1 MiB chunk of each holds data (a 4 KiB mark at its
        start, the same everywhere, so the store holds it once while every backup's manifest
        names every chunk: 64 entries on the small disk, 65,536 on the large one). Then rounds
        of one changed chunk and a backup of each disk, side by side; then the first backups
        deleted (each shares most of its manifest with the later ones)."""
        sizes = self.sizes
        disks = {
            "small": sizes.incremental_small_mib * MIB,
            "large": sizes.incremental_disk_gib * GIB,
        }
        runs: dict[str, dict[str, Any]] = {}
        with self.cluster("incremental", ONE_REGION, LARGE_CHUNK) as cluster:
            node = self.node(cluster)
            servers: dict[str, str] = {}
            backups: dict[str, list[str]] = {name: [] for name in disks}
            for name, disk_bytes in disks.items():
                server_id = servers[name] = node.create_server(disk_bytes, f"bench-{name}")
                chunks = disk_bytes // MIB
                node.write(_marks(server_id, chunks), chunks * MARK_BYTES)
                os.sync()
                backup, seconds = timed(node.backup, server_id)
                backups[name].append(backup.backup_id)
                runs[name] = {
                    "disk_bytes": disk_bytes,
                    "chunks_named": chunks,
                    "full_backup_s": round(seconds, 3),
                }
            catalog = cluster.config.region(REGION).data_dir / "catalog.db"
            catalog_before = _file_bytes(catalog)
            # A data set of changes per disk: a chunk one disk's backup stored would otherwise
            # make the other's the cheaper for finding it stored already.
            changes = {name: self.data() for name in disks}
            times: dict[str, list[float]] = {name: [] for name in disks}
            rounds = sizes.history + LATE_SAMPLES
            for round_ in range(rounds):
                for name, server_id in servers.items():  # side by side: the same conditions
                    chunk = (round_ * CHANGE_STRIDE) % (disks[name] // MIB)  # a new page each
                    changed = changes[name].write_requests(
                        server_id, chunk * MIB, round_ * MIB, MIB
                    )
                    node.write(changed, MIB)
                    backup, seconds = timed(node.backup, server_id)
                    if backup.bytes_read != MIB:
                        raise BenchError(f"an incremental backup read {backup.bytes_read} bytes")
                    times[name].append(seconds)
                    backups[name].append(backup.backup_id)
                if round_ % 25 == 24:
                    progress(f"incremental: {round_ + 1} backups of each disk")
            catalog_per_round = (_file_bytes(catalog) - catalog_before) / rounds
            deletes = {
                name: [node.delete_backup(b) for b in backups[name][:LATE_SAMPLES]]
                for name in disks
            }
            peaks = self.record_peaks("incremental", {"node": cluster.node(REGION)})
        for name, run in runs.items():
            first = statistics.median(times[name][:LATE_SAMPLES])
            late = statistics.median(times[name][sizes.history :])
            run.update(first_p50_s=round(first, 4), after_history_p50_s=round(late, 4))
            run["history_growth"] = ratio(late, first)
            run["delete_p50_s"] = round(statistics.median(deletes[name]), 4)
        value = ratio(runs["large"]["after_history_p50_s"], runs["small"]["after_history_p50_s"])
        self.figures["incremental_growth_ratio"] = {
            "value": value,
            "goal": "<= 2",
            "meets_goal": value <= 2,
            "history": sizes.history,
            "timed_backups": LATE_SAMPLES,
            "delete_growth_ratio": ratio(
                runs["large"]["delete_p50_s"], runs["small"]["delete_p50_s"]
            ),
            "catalog_bytes_per_round": round(catalog_per_round),
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

    # -- 7: concurrent writers ----------------------------------------------------------------

    def concurrent_writes(self) -> None:
        """Each level on a fresh node (its VmHWM only grows): that many WriteDisk streams of
        `writer_mib` each at once, the node's peak, and its resident memory after IDLE_S."""
        size = self.sizes.writer_mib * MIB
        levels = []
        for writers in self.sizes.writers:
            with self.cluster(f"writes_{writers}", ONE_REGION, LARGE_CHUNK) as cluster:
                node = self.node(cluster)
                servers = [node.create_server(size, "bench-writer") for _ in range(writers)]
                datas = [self.data() for _ in servers]
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=writers) as pool:
                    for done in [
                        pool.submit(node.write, d.write_requests(sid, 0, 0, size), size)
                        for sid, d in zip(servers, datas, strict=True)
                    ]:
                        done.result()
                seconds = time.perf_counter() - start
                process = cluster.node(REGION)
                peak = self.record_peaks(f"concurrent_writes_{writers}", {"node": process})
                time.sleep(IDLE_S)
                idle = round(resident_mb(process.pid), 1)
                node.check(servers[-1], datas[-1], [0, size - MIB], "a concurrent write")
            progress(
                f"concurrent_writes: {writers} x {size_text(size)} in {seconds:.1f} s, peak "
                f"{peak['node']} MB, {idle} MB after {IDLE_S:g} s idle"
            )
            levels.append(
                {
                    "writers": writers,
                    "seconds": round(seconds, 2),
                    "mb_s": round(writers * size / MB / seconds, 1),
                    "peak_rss_mb": peak["node"],
                    "idle_rss_mb": idle,
                }
            )
        worst = max(level["peak_rss_mb"] for level in levels)
        self.figures["concurrent_writes"] = {
            "value": worst,
            "goal": "<= 150 MB",
            "meets_goal": worst <= 150,
            "writer_bytes": size,
            "levels": levels,
        }


IDLE_S = 10.0  # seconds the node idles before its resident memory is read


def resident_mb(pid: int) -> float:
    """VmRSS of a process now, in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
    raise BenchError(f"process {pid} has no VmRSS")
