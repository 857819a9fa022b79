"""The replication job runner: copies a backup from its region's node to a replica in another
region's node, as a sequence of idempotent steps, so that an attempt cut short by a node that
went away can simply run again and resume: hold the source backup, create the replica with the
source's manifest (keyed by the job), ask the target which chunks it still lacks, relay those,
complete the replica. Transient failures are retried with backoff while the job makes progress
(the retry budget is time without progress); any other answer of a node fails the job at once
with the node's words. An ended job records its outcome on the source, and a failed one has
its leftover removed (coordinator/job_cleanups.py), before the job reads ended."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from coordinator.config import CoordinatorConfig
from coordinator.job_cleanups import JobCleanups, node_client, record_of
from coordinator.links import Links, unlimited
from coordinator.models import CleanupKind, JobStatus, Progress, ReplicationJob
from coordinator.sim_waits import SimulatedWaits
from coordinator.store import Store
from coordinator.transit import LinkPipes, Transit
from csbs import request_ids, tally
from csbs.clients import RegionNodeClient, RegionNodes, incomplete_copy, is_transient
from csbs.clock import Clock
from csbs.errors import CsbsError, ReplicationJobNotFound
from csbs.node_views import BackupOrigin, RecordStatus, ReplicaHeader
from csbs.notifier import Notifier

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between two progress writes (and notifications) of a job
SIMULATED_RETRY_MAX = 60.0  # simulated seconds at most between two attempts after a cut link


class _Stopping(Exception):
    """The coordinator is stopping: the job is left as it is and resumed on the next start."""


class _JobEnded(_Stopping):
    """The job ended before this run of it began (it was submitted again): nothing to do."""


@dataclass
class _Run:
    """One run of a job (all its attempts in this process): what it is doing now, for the
    failure reason, and when it last made real progress, for the retry budget. Only what the
    target really gained counts (the replica made, chunks it stored, fewer chunks missing), so
    that an attempt that fails the same way again and again runs out of budget."""

    step: str = "starting"
    progressed_at: float = field(default_factory=time.monotonic)
    attempts: int = 0
    replica_made: bool = False
    fewest_missing: int | None = None
    # Simulated mode (issue 13): the cluster clock's time of the last progress, and the
    # failures of the simulated world (a cut link) in a row, which are waited for on that
    # clock and judged by the simulated retry budget.
    progressed_on_clock: datetime | None = None
    simulated_failures: int = 0
    transit: Transit | None = None

    def progressed(self) -> None:
        self.progressed_at = time.monotonic()
        self.progressed_on_clock = None

    def replica_known(self) -> None:
        if not self.replica_made:
            self.replica_made = True
            self.progressed()

    def missing(self, count: int) -> None:
        if self.fewest_missing is None or count < self.fewest_missing:
            self.fewest_missing = count
            self.progressed()

    def stored(self, chunks_written: int, bytes_written: int) -> None:
        if chunks_written:
            self.progressed()


class _ProgressTracker:
    """Counts chunks as they pass the relay (called from a gRPC thread) and writes the job's
    progress at most every PROGRESS_EVERY seconds."""

    def __init__(self, save: Callable[[Progress], None], start: Progress) -> None:
        self._save = save
        self._lock = threading.Lock()
        self.progress = start
        self._saved_at = time.monotonic()

    def on_chunk(self, length: int) -> None:
        with self._lock:
            p = self.progress
            self.progress = replace(
                p, chunks_sent=p.chunks_sent + 1, bytes_sent=p.bytes_sent + length
            )
            now = time.monotonic()
            if now - self._saved_at < PROGRESS_EVERY:
                return
            self._saved_at = now
            snapshot = self.progress
        self._save(snapshot)

    def flush(self) -> None:
        with self._lock:
            snapshot = self.progress
        self._save(snapshot)

    def bytes_left(self) -> int:
        with self._lock:
            p = self.progress
        return max(p.bytes_planned - p.bytes_skipped - p.bytes_sent, 0)


class JobRunner:
    """Runs jobs on `config.job_workers` threads (the others wait, WAITING); each job at most
    once at a time in this process."""

    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Clock,
        nodes: RegionNodes,
        store: Store,
        notifier: Notifier,
        stop: threading.Event,
        cleanups: JobCleanups,
        links: Links,
        waits: SimulatedWaits,
        counts: tally.Tally,
    ) -> None:
        self._config = config
        self._tally = counts
        self._links = links
        self._pipes = LinkPipes()
        self._waits = waits
        self._clock = clock
        self._nodes = nodes
        self._store = store
        self._notifier = notifier
        self._stop = stop
        self._cleanups = cleanups
        self._jobs = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="job")
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    def close(self) -> None:
        """Waits for the running jobs to stop (the stop event is set): they resume at the next
        start."""
        self._jobs.shutdown(wait=True, cancel_futures=True)

    def _client(self, region_id: str, account_id: str) -> RegionNodeClient:
        return node_client(self._nodes, region_id, account_id)

    def _load_job(self, job_id: str) -> ReplicationJob:
        job = self._store.get_job(job_id)
        if job is None:
            raise ReplicationJobNotFound(job_id)
        return job

    def submit(self, job_id: str) -> None:
        with self._running_lock:
            if job_id in self._running or self._stop.is_set():
                return
            self._running.add(job_id)
            self._waits.job_queued(job_id, self._takes_simulated_time(job_id))
        self._jobs.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        self._waits.job_working(job_id)
        try:
            # Every call the job makes carries the ID of the request that made it (issue 14).
            # Read inside the try: a failed read must still end the job's turn (finally).
            request_id = self._store.job_request_id(job_id) or request_ids.new_request_id()
            with request_ids.bound(request_id):
                self._run_attempts(job_id)
        except Exception:
            log.exception("replication job %s: unexpected error", job_id)
        finally:
            with self._running_lock:
                self._waits.job_ended(job_id)  # before a submit can queue it again
                self._running.discard(job_id)

    def _run_attempts(self, job_id: str) -> None:
        run = _Run()
        budget = self._config.retry_budget_seconds

        def out_of_budget(state: RetryCallState) -> bool:
            if self._simulated_failure(state):
                # Waited for on the cluster clock: judged in simulated seconds.
                now = self._clock.now()
                if run.progressed_on_clock is None:
                    run.progressed_on_clock = now
                waited = (now - run.progressed_on_clock).total_seconds()
                return waited > self._config.simulated_retry_budget_seconds
            return time.monotonic() - run.progressed_at > budget

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            log.warning(
                "replication job %s: attempt %d failed (%s); trying again",
                job_id,
                state.attempt_number,
                error,
            )
            run.simulated_failures = (
                run.simulated_failures + 1 if self._simulated_failure(state) else 0
            )

        def sleep(seconds: float) -> None:
            if not run.simulated_failures or run.transit is None:
                self._sleep(seconds)
                return
            # Deterministic on the cluster clock: 1, 2, 4 ... 60 simulated seconds.
            wait = min(2.0 ** (run.simulated_failures - 1), SIMULATED_RETRY_MAX)
            run.transit.wait_for_retry(wait)  # not trying: its after_wait restarts the budget

        retrying = Retrying(
            retry=retry_if_exception(lambda e: is_transient(e) and not self._stop.is_set()),
            stop=out_of_budget,
            wait=wait_random_exponential(multiplier=0.25, max=4.0),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retrying(self._attempt, job_id, run)
        except _Stopping:
            return
        except CsbsError as exc:
            if self._stop.is_set() and is_transient(exc):
                return  # cut short by the stop, not by the nodes: resumed on the next start
            reason = f"{run.step}: {exc.message}"
            if is_transient(exc):
                spent = (
                    f"{self._config.simulated_retry_budget_seconds:.0f} simulated seconds"
                    if getattr(exc, "simulated", False) and self._simulated
                    else f"{budget:.0f}s"
                )
                reason = (
                    f"gave up after {run.attempts} attempts and {spent} without progress; "
                    f"last error while {reason}"
                )
            else:
                reason = f"failed while {reason}"
            self._fail(job_id, reason)
        except Exception:
            log.exception("replication job %s: unexpected error", job_id)
            self._fail(job_id, f"internal error of the coordinator while {run.step}; see its log")

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _takes_simulated_time(self, job_id: str) -> bool:
        """Simulated mode: the job's link is not as fast as this machine (AdvanceClock steps
        through it from the start)."""
        if not self._simulated:
            return False
        job = self._store.get_job(job_id)
        return job is not None and self._links.get(
            job.source_region_id, job.target_region_id
        ) != unlimited(job.source_region_id, job.target_region_id)

    @property
    def _simulated(self) -> bool:
        return bool(getattr(self._clock, "simulated", False))

    def _simulated_failure(self, state: RetryCallState) -> bool:
        """The attempt failed by the simulated world (a cut link), in simulated mode."""
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        return self._simulated and bool(getattr(error, "simulated", False))

    def _transit(self, job: ReplicationJob, run: _Run) -> Transit:
        transit = Transit(
            job.job_id,
            job.source_region_id,
            job.target_region_id,
            self._links,
            self._pipes,
            self._clock,
            self._waits if self._simulated else None,
            self._stop,
        )
        if run.transit is not None:  # the attempt's time goes on from the attempt before
            transit.carry_on_from(run.transit)
        run.transit = transit

        def waited() -> None:  # waiting for the link (or the clock) is not trying
            run.progressed_at = time.monotonic()

        transit.after_wait = waited
        return transit

    def _attempt(self, job_id: str, run: _Run) -> None:
        if self._stop.is_set():
            raise _Stopping
        now = self._clock.now()
        job = self._store.start_attempt(job_id, now)
        if job is None:
            raise _JobEnded
        run.attempts = job.attempts
        self._notifier.changed(job_id)
        with self._transit(job, run) as transit:
            self._copy(job, run, transit)

    def _copy(self, job: ReplicationJob, run: _Run, transit: Transit) -> None:
        """One attempt's steps; every call to the target region crosses the link."""
        job_id = job.job_id
        src, tgt = job.source_region_id, job.target_region_id
        backup_id = job.source_backup_id

        run.step = f"reading backup {backup_id} in region {src}"
        source = self._client(src, job.account_id)
        backup = source.get_backup(job.source_project_id, backup_id)
        run.step = f"holding backup {backup_id} in region {src}"
        source.hold_backup(backup_id, job_id)
        source.record_replication(backup_id, record_of(job, RecordStatus.REPLICATING))

        run.step = f"creating the replica in region {tgt}"
        target = self._client(tgt, job.account_id)
        header = ReplicaHeader(
            project_id=job.target_project_id,
            name=job.replica_name,
            description=job.replica_description,
            server_type=backup.server_type,
            disks=backup.disks,
            origin=BackupOrigin(
                replicated=True,
                source_region_id=src,
                source_project_id=job.source_project_id,
                source_backup_id=backup_id,
                way=job.way,
                policy_id=job.policy_id,
                replication_job_id=job_id,
            ),
            job_id=job_id,
        )
        transit.call()
        replica = target.create_replica(header, source, backup_id, self._stop)
        replica_id = replica.backup_id
        if replica_id != job.replica_id:
            self._store.set_replica(job_id, replica_id, self._clock.now())
            self._notifier.changed(job_id)
        run.replica_known()

        run.step = f"finding the chunks region {tgt} lacks for replica {replica_id}"
        transit.call()
        missing = target.find_missing_chunks(replica_id)
        run.missing(missing.chunks_lacking)
        p = job.progress
        if self._store.is_planned(job_id):
            # Resuming: what the target holds beyond what it held at first arrived in an
            # earlier attempt.
            start = Progress(
                chunks_planned=missing.chunks_total,
                bytes_planned=missing.bytes_total,
                chunks_sent=max(missing.chunks_already_held - p.chunks_skipped, 0),
                bytes_sent=max(missing.bytes_already_held - p.bytes_skipped, 0),
                chunks_skipped=p.chunks_skipped,
                bytes_skipped=p.bytes_skipped,
            )
        else:
            start = Progress(
                chunks_planned=missing.chunks_total,
                bytes_planned=missing.bytes_total,
                chunks_skipped=missing.chunks_already_held,
                bytes_skipped=missing.bytes_already_held,
            )
        self._save_progress(job_id, start)

        run.step = f"copying {missing.chunks_lacking} chunks from region {src} to region {tgt}"
        tracker = _ProgressTracker(lambda q: self._save_progress(job_id, q), start)
        transit.before_wait = tracker.flush  # what a stopped clock shows is what crossed
        transit.remaining_bytes = tracker.bytes_left
        lacking = missing.chunks_total - missing.chunks_already_held
        average = (missing.bytes_total - missing.bytes_already_held) // max(lacking, 1)
        try:
            # A page at a time (issue 12: nothing here grows with the backup); what arrived
            # for one page is held by the next, so a chunk named twice is sent once.
            page = missing
            while True:
                target.relay_chunks(
                    source,
                    replica_id,
                    page.missing,
                    tracker.on_chunk,
                    self._stop,
                    run.stored,
                    link=transit,
                    average_chunk_bytes=average,
                )
                if not page.next_page_token:
                    break
                transit.call()
                page = target.find_missing_chunks(replica_id, page.next_page_token)
        finally:
            tracker.flush()
            sent = tracker.progress.bytes_sent - start.bytes_sent
            self._tally.add(tally.REPLICATION_BYTES_SENT, sent)

        run.step = f"completing replica {replica_id} in region {tgt}"
        transit.call()
        left = target.find_missing_chunks(replica_id)
        run.missing(left.chunks_lacking)
        if left.chunks_lacking:
            # Some chunks did not arrive (a stream cut short): another attempt sends them.
            raise incomplete_copy(
                tgt,
                f"{left.chunks_lacking} chunks of replica {replica_id} still missing after "
                "the copy",
            )
        transit.call()
        target.complete_replica(replica_id)
        run.step = f"recording the replication on backup {backup_id} in region {src}"
        # In simulated mode the clock may have jumped past the transfer's end (to the end it
        # was told, which duplicate chunks make later): the job ended at its own time.
        self._succeed(job_id, transit.time)

    def _save_progress(self, job_id: str, progress: Progress) -> None:
        self._store.save_progress(job_id, progress, self._clock.now())
        self._notifier.changed(job_id)

    def _succeed(self, job_id: str, ended_at: datetime) -> None:
        """The replica is complete: the source backup records it and is released, then the job
        is SUCCESS. If the source does not answer, that is left to the clean-up loop: the
        replica is complete and usable either way."""
        job = self._load_job(job_id)
        error = self._cleanups.finish_source(replace(job, status=JobStatus.SUCCESS))
        pending = (
            []
            if error is None
            else [(CleanupKind.SOURCE, job.source_region_id, job.source_backup_id)]
        )
        self._store.finish(job_id, JobStatus.SUCCESS, "", ended_at, pending)
        self._tally.add(tally.REPLICATION_JOBS_ENDED, status="success")
        self._notifier.changed(job_id)
        log.info("replication job %s: success, replica %s", job_id, job.replica_id)

    def _fail(self, job_id: str, reason: str) -> None:
        """The job failed: the source backup records why and is released, and whatever the
        job made in the target region is removed; what a node does not take now is kept for
        the clean-up loop. A failed job's leftovers never count for R3."""
        job = replace(self._load_job(job_id), status=JobStatus.FAILED, failure_reason=reason)
        log.warning("replication job %s failed: %s", job_id, reason)
        pending = []
        if self._cleanups.finish_source(job) is not None:
            pending.append((CleanupKind.SOURCE, job.source_region_id, job.source_backup_id))
        # Removed before the job reads FAILED, so that whoever sees the failure normally sees
        # no leftover; if the target does not take it now, the stored clean-up retries.
        removal = self._cleanups.remove_replica(job)
        if removal is not None:
            log.warning("replication job %s: replica not removed yet: %s", job_id, removal)
            pending.append((CleanupKind.TARGET, job.target_region_id, job.replica_id))
        self._store.finish(job_id, JobStatus.FAILED, reason, self._clock.now(), pending)
        self._tally.add(tally.REPLICATION_JOBS_ENDED, status="failed")
        self._notifier.changed(job_id)
