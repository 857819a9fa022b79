"""Figure 8 of the scale benchmark (bench/scale.py): `find_missing_history_ratio`, what
FindMissingChunks costs for a replica of many 64 KiB chunks (65,536 by default) when its account
holds one backup of that data in the target region, and when it holds 200 (issue 12 saw 0.26 s
and 1.48 s: the dedup privacy check looked at every backup of the account)."""

from __future__ import annotations

import statistics
import time

# The other benchmarks, next to this file.
from backup import BenchError, progress
from replicate import REGIONS, SOURCE, TARGET, TARGET_PROJECT
from scale_replication import ReplicationFigures
from scale_support import SMALL_CHUNK, UNARY_TIMEOUT_S, ratio

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import coordinator_pb2_grpc
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub

FIND_SAMPLES = 5  # whole FindMissingChunks walks timed at each history


class FindMissingFigure(ReplicationFigures):
    def find_missing(self) -> None:
        """A backup of `find_missing_chunks` chunks replicated; FindMissingChunks walked over
        every page of the replica (p50 of FIND_SAMPLES), with the replica the account's only
        backup of that data, then with `find_missing_history` of them (a server made from the
        replica in the target region, backed up again and again: each names every chunk)."""
        sizes = self.sizes
        chunks, history = sizes.find_missing_chunks, sizes.find_missing_history
        size = chunks * SMALL_CHUNK
        data = self.data()
        label = "find_missing"
        with self.cluster(label, REGIONS, SMALL_CHUNK, coordinator=True) as cluster:
            source = self.node(cluster, SOURCE)
            target = self.node(cluster, TARGET, TARGET_PROJECT)
            coordinator = coordinator_pb2_grpc.CoordinatorStub(cluster.coordinator_channel())
            internal = RegionNodeInternalStub(cluster.channel(TARGET))
            server_id = source.create_server(size, f"bench-{label}")
            source.write(data.write_requests(server_id, 0, 0, size), size)
            backup = source.backup(server_id)
            done = self.replicate(coordinator, backup.backup_id, label, size)
            if done.status != cpb.REPLICATION_JOB_STATUS_SUCCESS:
                raise BenchError(f"{label}: the replication ended {done.failure_reason!r}")

            def walk() -> float:
                """Seconds to walk every page of FindMissingChunks for the replica."""
                start = time.perf_counter()
                token, pages = "", 0
                while True:
                    page = internal.FindMissingChunks(
                        pb.FindMissingChunksRequest(replica_id=done.replica_id, page_token=token),
                        timeout=UNARY_TIMEOUT_S,
                    )
                    pages += 1
                    if page.missing:
                        raise BenchError(f"{label}: a whole replica lacks {len(page.missing)}")
                    if not (token := page.next_page_token):
                        return time.perf_counter() - start

            one = statistics.median(walk() for _ in range(FIND_SAMPLES))
            image = target.stub.CreateImage(
                pb.CreateImageRequest(project_id=TARGET_PROJECT, backup_id=done.replica_id),
                timeout=UNARY_TIMEOUT_S,
            )
            made = target.wait_server(
                target.stub.CreateServer(
                    pb.CreateServerRequest(project_id=TARGET_PROJECT, image_id=image.image_id),
                    timeout=UNARY_TIMEOUT_S,
                )
            )
            for k in range(history - 1):
                target.backup(made.server_id)
                if k % 50 == 49:
                    progress(f"{label}: {k + 2} backups of the data held in {TARGET}")
            many = statistics.median(walk() for _ in range(FIND_SAMPLES))
            peaks = self.record_peaks(label, {"target": cluster.node(TARGET)})
        value = ratio(many, one)
        progress(
            f"{label}: {chunks} chunks, {one:.3f} s with 1 backup held, {many:.3f} s with {history}"
        )
        self.figures["find_missing_history_ratio"] = {
            "value": value,
            "goal": "<= 2 (the issue: 1.48 s / 0.26 s = 5.7)",
            "meets_goal": value <= 2,
            "chunks": chunks,
            "seconds": {"1": round(one, 4), str(history): round(many, 4)},
            "peak_rss_mb": peaks,
        }
