"""The limited-link figure of bench/replicate.py (issue 13): the full backup replicated again, to
a third region, over a link the operator limited to 100 MB/s; with the wall clock the link's
bandwidth is real, so the replication should take size / 100 MB/s (a 1 GiB disk: about
10.7 s). Reports the rate measured and its ratio to the limit."""

from __future__ import annotations

import time
from dataclasses import dataclass

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import coordinator_pb2_grpc

LIMIT_BYTES_PER_SECOND = 100_000_000  # 100 MB/s (MB = 10^6 bytes)
MB = 1e6


@dataclass(frozen=True)
class LimitedLink:
    seconds: float
    bytes_sent: int
    attempts: int

    @property
    def mb_s(self) -> float:
        return self.bytes_sent / MB / self.seconds

    @property
    def vs_limit(self) -> float:
        return self.mb_s / (LIMIT_BYTES_PER_SECOND / MB)


def replicate_over_limited_link(
    coordinator: coordinator_pb2_grpc.CoordinatorStub,
    admin: coordinator_pb2_grpc.CoordinatorAdminStub,
    source: str,
    target: str,
    backup_id: str,
    timeout: float,
) -> LimitedLink:
    """Sets the link source -> target to 100 MB/s, replicates the backup there, waits for the
    job to succeed, and clears the link."""
    admin.SetLink(
        cpb.SetLinkRequest(
            link=cpb.Link(
                source_region_id=source,
                target_region_id=target,
                bandwidth_bytes_per_second=LIMIT_BYTES_PER_SECOND,
            )
        ),
        timeout=60,
    )
    try:
        start = time.perf_counter()
        job = coordinator.ReplicateBackup(
            cpb.ReplicateBackupRequest(
                source_region_id=source,
                backup_id=backup_id,
                target_region_id=target,
                name="bench-limited-link",
            ),
            timeout=60,
        )
        request = cpb.GetReplicationJobRequest(job_id=job.job_id)
        updates = list(coordinator.WatchReplicationJob(request, timeout=timeout))
        done = updates[-1] if updates else job
        seconds = time.perf_counter() - start
    finally:
        admin.ClearLink(
            cpb.ClearLinkRequest(source_region_id=source, target_region_id=target), timeout=60
        )
    if done.status != cpb.REPLICATION_JOB_STATUS_SUCCESS:
        raise RuntimeError(f"the limited-link replication failed: {done.failure_reason}")
    return LimitedLink(seconds, done.progress.bytes_sent, done.attempts)
