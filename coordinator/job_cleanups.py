"""What an ended replication job still owes the nodes, and the loop that pays it: its outcome
recorded on the source backup and the hold released (SOURCE), its leftover replica removed
from the target region (TARGET), the hold of a job withdrawn before it was answered (HOLD).
Each is stored with the job's end, in the same transaction (coordinator/store.py), and tried
again until done: at the next round when a node did not answer, backing off when it refused
(a refusal may pass once the node's state changes, say once space is added), reported with the
job meanwhile, never dropped. The same loop learns which replicas were deleted in their region
(issue 11), so that the source's record says so."""

from __future__ import annotations

import logging
import threading
import time

from coordinator.config import CoordinatorConfig
from coordinator.models import CleanupKind, JobStatus, ReplicationJob
from coordinator.store import Store
from csbs import request_ids
from csbs.clients import RegionNodeClient, RegionNodes, is_transient
from csbs.clock import Clock
from csbs.errors import CsbsError, NotFound, RegionNotFound
from csbs.node_views import RecordStatus, ReplicationRecord
from csbs.notifier import Notifier

log = logging.getLogger(__name__)

CLEANUP_BACKOFF_MAX = 60.0  # seconds between two tries of a clean-up a node refused

RECORD_STATUS = {
    JobStatus.WAITING: RecordStatus.REPLICATING,
    JobStatus.REPLICATING: RecordStatus.REPLICATING,
    JobStatus.SUCCESS: RecordStatus.SUCCESS,
    JobStatus.FAILED: RecordStatus.FAILED,
}


def node_client(nodes: RegionNodes, region_id: str, account_id: str) -> RegionNodeClient:
    """The region's node, called for `account_id` (which sees only its own projects)."""
    if region_id not in nodes:
        raise RegionNotFound(region_id)
    return nodes.client(region_id, account_id)


def record_of(job: ReplicationJob, status: RecordStatus, reason: str = "") -> ReplicationRecord:
    """The source backup's record of this job."""
    return ReplicationRecord(
        target_region_id=job.target_region_id,
        target_project_id=job.target_project_id,
        replica_id=job.replica_id,
        way=job.way,
        policy_id=job.policy_id,
        job_id=job.job_id,
        status=status,
        failure_reason=reason,
        replica_deleted=job.replica_deleted,
    )


class JobCleanups:
    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Clock,
        nodes: RegionNodes,
        store: Store,
        notifier: Notifier,
        stop: threading.Event,
    ) -> None:
        self._config = config
        self._clock = clock
        self._nodes = nodes
        self._store = store
        self._notifier = notifier
        self._stop = stop

    def _client(self, region_id: str, account_id: str) -> RegionNodeClient:
        return node_client(self._nodes, region_id, account_id)

    def finish_source(self, job: ReplicationJob) -> CsbsError | None:
        """Records the job's outcome on the source backup and releases the hold. None when
        done (or when the backup is gone: nothing is left to do it to); else the error, to try
        again (a refusal too: never dropped)."""
        record = record_of(job, RECORD_STATUS[job.status], job.failure_reason)
        try:
            source = self._client(job.source_region_id, job.account_id)
            source.record_replication(job.source_backup_id, record)
            source.release_backup(job.source_backup_id, job.job_id)
        except NotFound:
            log.info(
                "replication job %s: source backup %s is gone", job.job_id, job.source_backup_id
            )
        except CsbsError as exc:
            return exc
        return None

    def remove_replica(self, job: ReplicationJob) -> CsbsError | None:
        """Removes what a failed job made in the target region (the node keys it by the job
        when the replica's ID was never learnt). None when done or already gone."""
        try:
            self._client(job.target_region_id, job.account_id).remove_replica(
                job.replica_id, job.job_id
            )
        except NotFound:
            pass
        except CsbsError as exc:
            return exc
        return None

    def release_hold(self, region_id: str, backup_id: str, job_id: str) -> CsbsError | None:
        try:
            self._client(region_id, "").release_backup(backup_id, job_id)
        except NotFound:
            pass
        except CsbsError as exc:
            return exc
        return None

    def loop(self) -> None:
        """Every `cleanup_interval_seconds`: learn the deleted replicas, then pay what is owed
        (each on its own: a failure of one never holds the other back)."""
        while not self._stop.wait(self._config.cleanup_interval_seconds):
            for step in (self.learn_deleted_replicas, self.run_cleanups):
                try:
                    step()
                except Exception:
                    log.exception("clean-up round: %s failed", step.__name__)

    def learn_deleted_replicas(self) -> int:
        """Asks every node which replicas were deleted there since the last round, marks their
        jobs `replica_deleted`, and owes each a SOURCE clean-up, so that the source backup's
        record says so (run_cleanups, right after). A node that does not answer is asked again
        next round. Returns how many jobs were marked."""
        marked = 0
        for region_id in self._nodes.region_ids:
            if self._stop.is_set():
                break
            after = self._store.deletion_cursor(region_id)
            try:
                client = self._client(region_id, "")
                while True:
                    deleted, last_seq = client.deleted_replicas(after)
                    if last_seq < after:  # the node's catalog was made anew
                        after = 0
                        continue
                    if not deleted:
                        break
                    after = deleted[-1].seq
                    jobs = self._store.replicas_deleted(
                        region_id, [d.job_id for d in deleted], after, self._clock.now()
                    )
                    for job_id in jobs:
                        log.info("replication job %s: its replica was deleted", job_id)
                        self._notifier.changed(job_id)
                    marked += len(jobs)
            except CsbsError as exc:
                log.info("region %s: deleted replicas not learnt this round: %s", region_id, exc)
        return marked

    def run_cleanups(self) -> int:
        """One round over the clean-ups that are due; returns how many are left. One that
        failed is tried again: at the next round if the node did not answer, else backing off
        (a refusal may pass once the node's state changes, say once space is added), and
        reported with its job meanwhile (`cleanup_pending`), never dropped."""
        left = 0
        for cleanup in self._store.cleanups(due_at=time.time()):
            if self._stop.is_set():
                break
            # Its calls carry the request ID of the job's request (issue 14).
            with request_ids.bound(self._store.job_request_id(cleanup.job_id)):
                job = self._store.get_job(cleanup.job_id)
                if cleanup.kind == CleanupKind.HOLD:
                    error = self.release_hold(
                        cleanup.region_id, cleanup.resource_id, cleanup.job_id
                    )
                elif job is None:
                    error = None
                elif cleanup.kind == CleanupKind.SOURCE:
                    error = self.finish_source(job)
                else:
                    error = self.remove_replica(job)
                if error is None:
                    self._store.cleanup_done(cleanup.kind, cleanup.job_id)
                    log.info("clean-up %s of job %s done", cleanup.kind, cleanup.job_id)
                    self._notifier.changed(cleanup.job_id)
                    continue
                left += 1
                delay = 0.0
                if not is_transient(error):
                    delay = min(
                        self._config.cleanup_interval_seconds * 2 ** min(cleanup.attempts, 10),
                        CLEANUP_BACKOFF_MAX,
                    )
                log.warning(
                    "clean-up %s of job %s failed (attempt %d), trying again in %.0fs: %s",
                    cleanup.kind,
                    cleanup.job_id,
                    cleanup.attempts + 1,
                    max(delay, self._config.cleanup_interval_seconds),
                    error.message,
                )
                self._store.cleanup_failed(
                    cleanup.kind, cleanup.job_id, error.message, time.time() + delay
                )
                self._notifier.changed(cleanup.job_id)
        return left
