"""Issue 11: what a failed job leaves behind is removed, and a removal a node refuses is retried
and reported with the job, never dropped. Without processes: the coordinator's real store and
ReplicationService over a stand-in for the region nodes whose removal is refused (a refusal for
good, like a full region's RESOURCE_EXHAUSTED, cannot be produced on demand at that instant by
a real node; tests/test_replication_full_region.py covers the path with real processes)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.models import CleanupKind, JobStatus, Progress, ReplicationJob
from coordinator.replication import ReplicationService
from coordinator.store import Store
from csbs.clock import WallClock
from csbs.credentials import ClusterSecrets
from csbs.errors import StorageFull
from csbs.node_views import ReplicationWay

pytestmark = pytest.mark.timeout(60)

TARGET = "cn-east-3"


@dataclass
class _Target:
    """The target node: refuses removals while `full` is set."""

    full: threading.Event = field(default_factory=threading.Event)
    removed: list[str] = field(default_factory=list)

    def deleted_replicas(self, after_seq: int) -> tuple[list[object], int]:
        return [], 0

    def remove_replica(self, replica_id: str, job_id: str) -> bool:
        if self.full.is_set():
            raise StorageFull(TARGET, "the deletion's record")
        self.removed.append(replica_id)
        return True


class _Nodes:
    def __init__(self, target: _Target) -> None:
        self._target = target
        self.region_ids = [TARGET]

    def __contains__(self, region_id: object) -> bool:
        return region_id == TARGET

    def client(self, region_id: str, account_id: str = "") -> _Target:
        return self._target


def _failed_job() -> ReplicationJob:
    now = datetime.now(UTC)
    return ReplicationJob(
        job_id="job-1",
        way=ReplicationWay.MANUAL,
        policy_id="",
        source_region_id="cn-north-4",
        source_project_id="cn-north-4_default",
        source_backup_id="backup-1",
        target_region_id=TARGET,
        target_project_id="cn-east-3_default",
        replica_id="replica-1",
        replica_name="r",
        replica_description="",
        status=JobStatus.REPLICATING,
        progress=Progress(),
        failure_reason="",
        attempts=1,
        created_at=now,
        started_at=now,
        finished_at=None,
        updated_at=now,
        account_id="default",
    )


def test_a_refused_removal_of_a_leftover_is_retried_and_reported_never_dropped(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "coordinator.db")
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        data_dir=tmp_path,
        regions=(),
        secrets=ClusterSecrets({}, frozenset(), "x" * 32),
        cleanup_interval_seconds=0.05,
    )
    target = _Target()
    target.full.set()
    job = _failed_job()
    with store.transaction() as conn:
        store.insert_job(conn, job, "")
    store.finish(
        job.job_id,
        JobStatus.FAILED,
        "no space",
        datetime.now(UTC),
        [(CleanupKind.TARGET, TARGET, job.replica_id)],
    )
    service = ReplicationService(config, WallClock(), _Nodes(target), store)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while "tried 3 times" not in (store.get_job(job.job_id) or job).cleanup_pending:
            assert time.monotonic() < deadline, store.get_job(job.job_id)
            time.sleep(0.02)
        pending = (store.get_job(job.job_id) or job).cleanup_pending
        assert "removing its replica replica-1 in region cn-east-3" in pending, pending
        assert "no storage space" in pending, pending
        assert store.cleanups(), "the refused removal was dropped"

        target.full.clear()  # space added: the next try removes it
        deadline = time.monotonic() + 10
        while store.cleanups():
            assert time.monotonic() < deadline, store.cleanups()
            time.sleep(0.02)
        assert target.removed == ["replica-1"]
        assert (store.get_job(job.job_id) or job).cleanup_pending == ""
    finally:
        service.close()
        store.close()


def test_an_ended_job_never_runs_again(tmp_path: Path) -> None:
    """Issue 11, every job to a clean end: a job submitted once more after it ended (a fresh-
    clone CI run's fuzz caught one) held its source backup anew and turned its source's record
    back to replicating. An attempt is now started only for a waiting or replicating job."""
    store = Store(tmp_path / "coordinator.db")
    job = _failed_job()
    with store.transaction() as conn:
        store.insert_job(conn, job, "")
    started = store.start_attempt(job.job_id, datetime.now(UTC))
    assert started is not None and started.attempts == 2
    for ended in (JobStatus.SUCCESS, JobStatus.FAILED):
        store.finish(job.job_id, ended, "", datetime.now(UTC), [])
        assert store.start_attempt(job.job_id, datetime.now(UTC)) is None
        again = store.get_job(job.job_id)
        assert again is not None and again.status == ended and again.attempts == 2
