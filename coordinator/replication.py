"""Cross-region replication (M1): which regions a region can replicate to, the checks made
before a replication is accepted, and the jobs that copy a backup from its region's node to a
replica in another region's node.

A job is a sequence of idempotent steps, so that an attempt cut short by a node that went away
can simply run again and resume: hold the source backup, create the replica with the source's
manifest (keyed by the job), ask the target which chunks it still lacks, relay those, complete
the replica. What a failed job leaves behind (a partial replica, a hold) is cleaned up, later
if the node does not answer now. Plain Python: nodes are reached only through csbs.clients."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from coordinator.config import CoordinatorConfig
from coordinator.errors import IdempotencyTokenReused
from coordinator.models import (
    ACTIVE_STATUSES,
    CleanupKind,
    JobFilter,
    JobStatus,
    Page,
    Progress,
    ReplicateRequest,
    ReplicationJob,
    ReplicationTarget,
)
from coordinator.store import Store
from csbs.clients import (
    BackupOrigin,
    BackupStatus,
    BackupSummary,
    ProjectSummary,
    RecordStatus,
    RegionNodeClient,
    RegionNodes,
    RegionSummary,
    ReplicaHeader,
    ReplicationRecord,
    ReplicationWay,
    ServerType,
    incomplete_copy,
    is_transient,
)
from csbs.clock import Clock
from csbs.errors import (
    BackupCannotBeReplicated,
    CsbsError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegionNotFound,
    RegionRefusesReplication,
    ReplicaAlreadyExists,
    ReplicationJobNotFound,
    TargetProjectNotFound,
    Unavailable,
)
from csbs.names import validate_description, validate_name, validate_request_id
from csbs.notifier import Notifier
from csbs.paging import PageTokens, page_size

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between two progress writes (and notifications) of a job
R3_ROUNDS = 5
CLEANUP_BACKOFF_MAX = 60.0  # seconds between two tries of a clean-up a node refused

_RECORD_STATUS = {
    JobStatus.WAITING: RecordStatus.REPLICATING,
    JobStatus.REPLICATING: RecordStatus.REPLICATING,
    JobStatus.SUCCESS: RecordStatus.SUCCESS,
    JobStatus.FAILED: RecordStatus.FAILED,
}

_SERVER_KIND = {
    ServerType.BMS: "a bare-metal server (BMS)",
    ServerType.UNSPECIFIED: "no known kind of server",
}


class _Stopping(Exception):
    """The coordinator is stopping: the job is left as it is and resumed on the next start."""


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

    def progressed(self) -> None:
        self.progressed_at = time.monotonic()

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


def _job_parameters(job: ReplicationJob) -> dict[str, str]:
    """What a job was asked for, by the request's field names (an idempotency token answers
    with the job only for the same)."""
    return {
        "source_region_id": job.source_region_id,
        "backup_id": job.source_backup_id,
        "target_region_id": job.target_region_id,
        "target_project_id": job.target_project_id,
        "name": job.replica_name,
        "description": job.replica_description,
        "way": job.way.name,
        "policy_id": job.policy_id,
    }


def _project_not_found(project_id: str, region_id: str) -> CsbsError:
    return NotFound("project", f"{project_id} in region {region_id}")


def own_project(
    info: RegionSummary,
    region_id: str,
    account_id: str,
    project_id: str,
    field_name: str,
    not_found: Callable[[str, str], CsbsError] = _project_not_found,
) -> ProjectSummary:
    """The named project, which must be one of the account's own, or the account's main
    project in the region when none is named (P3). Another account's project is
    PERMISSION_DENIED, an unknown one `not_found` (issue 6). `info` must show every project of
    the region (asked for no account), to tell the two apart."""
    if not project_id:
        main = info.main_project(account_id)
        if main is None:
            raise not_found("(main)", region_id)
        return main
    project = info.project(project_id)
    if project is None:
        raise not_found(project_id, region_id)
    if project.account_id != account_id:
        raise PermissionDenied(
            f"{field_name}: project {project_id} in region {region_id} is not a project of "
            "your account"
        )
    return project


class ReplicationService:
    def __init__(
        self, config: CoordinatorConfig, clock: Clock, nodes: RegionNodes, store: Store
    ) -> None:
        self._config = config
        self._clock = clock
        self._nodes = nodes
        self._store = store
        self._tokens = PageTokens(
            self._store.setting("page_token_secret", secrets.token_hex(32)).encode()
        )
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._jobs = ThreadPoolExecutor(max_workers=config.job_workers, thread_name_prefix="job")
        self._calls = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ask")
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        for job_id in self._store.active_job_ids():
            log.info("resuming replication job %s", job_id)
            self._submit(job_id)
        self._cleaner = threading.Thread(target=self._cleanup_loop, name="cleanup", daemon=True)
        self._cleaner.start()

    def close(self) -> None:
        """Stops copying (unfinished jobs resume on the next start) and closes the store."""
        self._stop.set()
        self._jobs.shutdown(wait=True, cancel_futures=True)
        self._calls.shutdown(wait=True, cancel_futures=True)
        self._cleaner.join()

    # -- helpers ---------------------------------------------------------------------------------
    def _client(self, region_id: str, account_id: str) -> RegionNodeClient:
        """The region's node, called for `account_id` (which sees only its own projects)."""
        if region_id not in self._nodes:
            raise RegionNotFound(region_id)
        return self._nodes.client(region_id, account_id)

    def _region_info(self, region_id: str, account_id: str) -> RegionSummary:
        return self._client(region_id, account_id).region_info()

    # -- targets (R5) ----------------------------------------------------------------------------
    def list_targets(self, account_id: str, source_region_id: str) -> list[ReplicationTarget]:
        """Every other region that accepts replication now, as it says itself at this call
        (R5), with the caller's projects there (P3). A region that does not answer is left
        out: it cannot take a replica now."""
        if source_region_id not in self._nodes:
            raise RegionNotFound(source_region_id)
        others = [r for r in self._nodes.region_ids if r != source_region_id]
        answers = list(self._calls.map(self._target_or_none, others, [account_id] * len(others)))
        return [t for t in answers if t is not None]

    def _target_or_none(self, region_id: str, account: str) -> ReplicationTarget | None:
        try:
            info = self._region_info(region_id, account)
        except CsbsError as exc:
            log.info("region %s left out of the replication targets: %s", region_id, exc)
            return None
        if not info.accepts_replication:
            return None
        projects = tuple(p for p in info.projects if p.account_id == account)
        if not projects:
            return None
        return ReplicationTarget(info.region_id or region_id, info.display_name, projects)

    # -- M1: replicate one backup ----------------------------------------------------------------
    def replicate(self, request: ReplicateRequest) -> ReplicationJob:
        """Checks everything it can, then records the job (WAITING) and starts it in the
        background. A request with an idempotency token already used in the source project
        answers with that job."""
        src, tgt, backup_id = request.source_region_id, request.target_region_id, request.backup_id
        account = request.account_id
        if not account:
            raise InvalidArgument("a replication acts for an account")
        for field_name, value in (
            ("source_region_id", src),
            ("target_region_id", tgt),
            ("backup_id", backup_id),
        ):
            if not value:
                raise InvalidArgument(f"{field_name} is required")
        if src not in self._nodes:
            raise RegionNotFound(src)
        if tgt not in self._nodes:
            raise RegionNotFound(tgt)
        if tgt == src:
            raise InvalidArgument(
                f"target_region_id: the target region must be another region than the source "
                f"region {src}"
            )
        if request.name:
            validate_name(request.name, "name")
        validate_description(request.description, "description")
        token = validate_request_id(request.idempotency_token, "idempotency_token")

        source = self._client(src, account)
        # Every project of the region (asked for no account): see own_project.
        source_project_id = own_project(
            self._region_info(src, ""), src, account, request.source_project_id, "source_project_id"
        ).project_id
        if token:
            with self._store.read() as conn:
                existing = self._store.job_by_token(conn, source_project_id, token)
            if existing is not None:
                return self._same_request(existing, self._asked(request, existing), token)

        backup = source.get_backup(source_project_id, backup_id)
        self._check_replicable(src, backup)

        target_info = self._region_info(tgt, "")
        if not target_info.accepts_replication:
            raise RegionRefusesReplication(tgt)
        target_project = own_project(
            target_info,
            tgt,
            account,
            request.target_project_id,
            "P3: target_project_id (replication never crosses accounts)",
            TargetProjectNotFound,
        )
        default_name = (
            f"manual_rep_from_{backup.backup_id}"
            if request.way == ReplicationWay.MANUAL
            else f"policy_rep_from_{backup.backup_id}"
        )
        name = validate_name(request.name or default_name, "name")

        now = self._clock.now()
        job = ReplicationJob(
            job_id=str(uuid.uuid4()),
            way=request.way,
            policy_id=request.policy_id,
            source_region_id=src,
            source_project_id=source_project_id,
            source_backup_id=backup.backup_id,
            target_region_id=tgt,
            target_project_id=target_project.project_id,
            replica_id="",
            replica_name=name,
            replica_description=request.description,
            status=JobStatus.WAITING,
            progress=Progress(),
            failure_reason="",
            attempts=0,
            created_at=now,
            started_at=None,
            finished_at=None,
            updated_at=now,
            account_id=account,
            source_server_id=backup.server_id,
        )
        created = self._insert_unless_r3(job, token)
        if created is job:
            self._hold_or_withdraw(source, job)
            log.info(
                "replication job %s: backup %s from %s to %s/%s",
                job.job_id,
                job.source_backup_id,
                src,
                tgt,
                job.target_project_id,
            )
            self.notifier.changed(job.job_id)
            self._submit(job.job_id)
        return created

    def _hold_or_withdraw(self, source: RegionNodeClient, job: ReplicationJob) -> None:
        """Holds the source backup for the job before ReplicateBackup answers, so that an
        accepted job's backup cannot be deleted before its copy starts. The job is recorded
        first (R3 and the token are settled atomically with it), so that a crash right after
        the hold leaves a job that resumes and releases it, never a hold nothing knows of. If
        the hold fails, the job was never answered: it is withdrawn, and a hold the node may
        have made anyway (an unanswered call) is left to a stored clean-up to release."""
        try:
            source.hold_backup(job.source_backup_id, job.job_id)
        except CsbsError as exc:
            maybe_held = (job.source_region_id, job.source_backup_id)
            self._store.withdraw_job(
                job.job_id, maybe_held if is_transient(exc) else None, self._clock.now()
            )
            raise

    def _asked(self, request: ReplicateRequest, existing: ReplicationJob) -> dict[str, str]:
        """What a request asks for, with the defaults filled in as a job records them, to
        compare with the job its idempotency token already names."""
        target_project = request.target_project_id
        if not target_project and request.target_region_id == existing.target_region_id:
            target_project = own_project(
                self._region_info(request.target_region_id, ""),
                request.target_region_id,
                request.account_id,
                "",
                "target_project_id",
                TargetProjectNotFound,
            ).project_id
        default_name = (
            f"manual_rep_from_{request.backup_id}"
            if request.way == ReplicationWay.MANUAL
            else f"policy_rep_from_{request.backup_id}"
        )
        return {
            "source_region_id": request.source_region_id,
            "backup_id": request.backup_id,
            "target_region_id": request.target_region_id,
            "target_project_id": target_project,
            "name": request.name or default_name,
            "description": request.description,
            "way": request.way.name,
            "policy_id": request.policy_id,
        }

    @staticmethod
    def _same_request(
        existing: ReplicationJob, asked: dict[str, str], token: str
    ) -> ReplicationJob:
        """The job the token already names, if it was asked with the same parameters;
        INVALID_ARGUMENT naming the token and the first parameter that differs otherwise."""
        first = _job_parameters(existing)
        for name, value in asked.items():
            if first[name] != value:
                raise IdempotencyTokenReused(
                    "idempotency_token",
                    token,
                    existing.job_id,
                    "replication job",
                    name,
                    first[name],
                    value,
                )
        return existing

    @staticmethod
    def _check_replicable(region_id: str, backup: BackupSummary) -> None:
        """R2 and R1, in that order (a replica is refused for what it is before its state)."""
        b = backup.backup_id
        if backup.origin.replicated:
            raise BackupCannotBeReplicated(
                "R2",
                f"backup {b} was replicated in from region {backup.origin.source_region_id}; "
                "a replica cannot be replicated again",
            )
        if backup.server_type != ServerType.ECS:
            kind = _SERVER_KIND.get(backup.server_type, backup.server_type.name)
            raise BackupCannotBeReplicated(
                "R1a",
                f"backup {b} was made from {kind}; only backups of elastic cloud servers (ECS) "
                "can be replicated",
            )
        if not any(d.system for d in backup.disks):
            raise BackupCannotBeReplicated(
                "R1b",
                f"backup {b} does not include its server's system disk; only a backup that "
                "includes the system disk can be replicated",
            )
        if backup.status != BackupStatus.AVAILABLE:
            raise BackupCannotBeReplicated(
                "R1c",
                f"backup {b} is {backup.status.name.lower()}; only an available backup can be "
                "replicated",
            )

    def _insert_unless_r3(self, job: ReplicationJob, token: str) -> ReplicationJob:
        """R3, checked and the job inserted atomically: no job of this backup to this region
        may be waiting or copying, and no earlier replica of it may still be there. Whether a
        replica is still there is the target node's word, asked outside the store lock; the
        check is then made again with what was learnt."""
        target = self._client(job.target_region_id, job.account_id)
        known_gone: set[str] = set()
        for _ in range(R3_ROUNDS):
            with self._store.transaction() as conn:
                if token:
                    existing = self._store.job_by_token(conn, job.source_project_id, token)
                    if existing is not None:
                        return self._same_request(existing, _job_parameters(job), token)
                active = self._store.jobs_to(
                    conn, job.source_backup_id, job.target_region_id, ACTIVE_STATUSES
                )
                if active:
                    raise ReplicaAlreadyExists(
                        f"R3: backup {job.source_backup_id} is already being replicated to "
                        f"region {job.target_region_id} (job {active[0].job_id}); a region "
                        "holds at most one replica of a backup"
                    )
                to_check = [
                    j
                    for j in self._store.jobs_to(
                        conn, job.source_backup_id, job.target_region_id, [JobStatus.SUCCESS]
                    )
                    if j.job_id not in known_gone and not j.replica_deleted
                ]
                if not to_check:
                    self._store.insert_job(conn, job, token)
                    return job
            for earlier in to_check:
                if self._replica_exists(target, earlier):
                    raise ReplicaAlreadyExists(
                        f"R3: region {job.target_region_id} already holds replica "
                        f"{earlier.replica_id} of backup {job.source_backup_id} (job "
                        f"{earlier.job_id}); a region holds at most one replica of a backup. "
                        "Delete that replica to replicate the backup there again (R4a)"
                    )
                known_gone.add(earlier.job_id)
        raise Unavailable("R3 could not be checked: the replications of this backup kept changing")

    @staticmethod
    def _replica_exists(target: RegionNodeClient, job: ReplicationJob) -> bool:
        if not job.replica_id:
            return False
        try:
            target.get_backup(job.target_project_id, job.replica_id)
        except NotFound:
            return False  # deleted in the target region: R4a allows another manual copy
        return True

    # -- jobs: reads -----------------------------------------------------------------------------
    def get_job(self, account_id: str, job_id: str) -> ReplicationJob:
        """A job of the account; another account's job is not found, as if it never existed
        (issue 6)."""
        job = self._load_job(job_id)
        if job.account_id != account_id:
            raise ReplicationJobNotFound(job_id)
        return job

    def _load_job(self, job_id: str) -> ReplicationJob:
        """A job, whoever's it is (the job runner's view)."""
        if not job_id:
            raise InvalidArgument("job_id is required")
        job = self._store.get_job(job_id)
        if job is None:
            raise ReplicationJobNotFound(job_id)
        return job

    def list_jobs(self, where: JobFilter, size: int, token: str) -> Page[ReplicationJob]:
        limit = page_size(size)
        scope = where.scope()
        after = self._tokens.open(scope, token)
        jobs, last_seq = self._store.list_jobs(where, after, limit)
        return Page(jobs, "" if last_seq is None else self._tokens.issue(scope, last_seq))

    def watch_job(
        self, account_id: str, job_id: str, active: Callable[[], bool]
    ) -> Iterator[ReplicationJob]:
        """The job now, then on every change, until it has succeeded or failed."""
        last: ReplicationJob | None = None
        while active() and not self._stop.is_set():
            version = self.notifier.version(job_id)
            job = self.get_job(account_id, job_id)
            if job != last:
                yield job
                last = job
            if job.status.finished:
                return
            self.notifier.wait(job_id, version, timeout=PROGRESS_EVERY)

    # -- the job runner --------------------------------------------------------------------------
    def _submit(self, job_id: str) -> None:
        with self._running_lock:
            if job_id in self._running or self._stop.is_set():
                return
            self._running.add(job_id)
        self._jobs.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            self._run_attempts(job_id)
        except Exception:
            log.exception("replication job %s: unexpected error", job_id)
        finally:
            with self._running_lock:
                self._running.discard(job_id)

    def _run_attempts(self, job_id: str) -> None:
        run = _Run()
        budget = self._config.retry_budget_seconds

        def out_of_budget(state: RetryCallState) -> bool:
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

        retrying = Retrying(
            retry=retry_if_exception(lambda e: is_transient(e) and not self._stop.is_set()),
            stop=out_of_budget,
            wait=wait_random_exponential(multiplier=0.25, max=4.0),
            sleep=self._sleep,
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
                reason = (
                    f"gave up after {run.attempts} attempts and {budget:.0f}s without progress; "
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

    def _attempt(self, job_id: str, run: _Run) -> None:
        if self._stop.is_set():
            raise _Stopping
        now = self._clock.now()
        job = self._store.start_attempt(job_id, now)
        run.attempts = job.attempts
        self.notifier.changed(job_id)
        src, tgt = job.source_region_id, job.target_region_id
        backup_id = job.source_backup_id

        run.step = f"reading backup {backup_id} in region {src}"
        source = self._client(src, job.account_id)
        backup = source.get_backup(job.source_project_id, backup_id)
        run.step = f"holding backup {backup_id} in region {src}"
        source.hold_backup(backup_id, job_id)
        source.record_replication(backup_id, self._record(job, RecordStatus.REPLICATING))

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
        replica = target.create_replica(header, source, backup_id, self._stop)
        replica_id = replica.backup_id
        if replica_id != job.replica_id:
            self._store.set_replica(job_id, replica_id, self._clock.now())
            self.notifier.changed(job_id)
        run.replica_known()

        run.step = f"finding the chunks region {tgt} lacks for replica {replica_id}"
        missing = target.find_missing_chunks(replica_id)
        run.missing(len(missing.missing))
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

        run.step = f"copying {len(missing.missing)} chunks from region {src} to region {tgt}"
        tracker = _ProgressTracker(lambda q: self._save_progress(job_id, q), start)
        try:
            target.relay_chunks(
                source, replica_id, missing.missing, tracker.on_chunk, self._stop, run.stored
            )
        finally:
            tracker.flush()

        run.step = f"completing replica {replica_id} in region {tgt}"
        left = target.find_missing_chunks(replica_id)
        run.missing(len(left.missing))
        if left.missing:
            # Some chunks did not arrive (a stream cut short): another attempt sends them.
            raise incomplete_copy(
                tgt,
                f"{len(left.missing)} chunks of replica {replica_id} still missing after the copy",
            )
        target.complete_replica(replica_id)
        run.step = f"recording the replication on backup {backup_id} in region {src}"
        self._succeed(job_id)

    def _save_progress(self, job_id: str, progress: Progress) -> None:
        self._store.save_progress(job_id, progress, self._clock.now())
        self.notifier.changed(job_id)

    @staticmethod
    def _record(job: ReplicationJob, status: RecordStatus, reason: str = "") -> ReplicationRecord:
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

    def _succeed(self, job_id: str) -> None:
        """The replica is complete: the source backup records it and is released, then the job
        is SUCCESS. If the source does not answer, that is left to the clean-up loop: the
        replica is complete and usable either way."""
        job = self._load_job(job_id)
        error = self._finish_source(replace(job, status=JobStatus.SUCCESS))
        pending = (
            []
            if error is None
            else [(CleanupKind.SOURCE, job.source_region_id, job.source_backup_id)]
        )
        self._store.finish(job_id, JobStatus.SUCCESS, "", self._clock.now(), pending)
        self.notifier.changed(job_id)
        log.info("replication job %s: success, replica %s", job_id, job.replica_id)

    def _fail(self, job_id: str, reason: str) -> None:
        """The job failed: the source backup records why and is released, and whatever the
        job made in the target region is removed; what a node does not take now is kept for
        the clean-up loop. A failed job's leftovers never count for R3."""
        job = replace(self._load_job(job_id), status=JobStatus.FAILED, failure_reason=reason)
        log.warning("replication job %s failed: %s", job_id, reason)
        pending = []
        if self._finish_source(job) is not None:
            pending.append((CleanupKind.SOURCE, job.source_region_id, job.source_backup_id))
        # Removed before the job reads FAILED, so that whoever sees the failure normally sees
        # no leftover; if the target does not take it now, the stored clean-up retries.
        removal = self._remove_replica(job)
        if removal is not None:
            log.warning("replication job %s: replica not removed yet: %s", job_id, removal)
            pending.append((CleanupKind.TARGET, job.target_region_id, job.replica_id))
        self._store.finish(job_id, JobStatus.FAILED, reason, self._clock.now(), pending)
        self.notifier.changed(job_id)

    def _finish_source(self, job: ReplicationJob) -> CsbsError | None:
        """Records the job's outcome on the source backup and releases the hold. None when
        done (or when the backup is gone: nothing is left to do it to); else the error, to try
        again (a refusal too: never dropped)."""
        record = self._record(job, _RECORD_STATUS[job.status], job.failure_reason)
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

    def _remove_replica(self, job: ReplicationJob) -> CsbsError | None:
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

    def _release_hold(self, region_id: str, backup_id: str, job_id: str) -> CsbsError | None:
        try:
            self._client(region_id, "").release_backup(backup_id, job_id)
        except NotFound:
            pass
        except CsbsError as exc:
            return exc
        return None

    # -- clean-ups -------------------------------------------------------------------------------
    def _cleanup_loop(self) -> None:
        while not self._stop.wait(self._config.cleanup_interval_seconds):
            try:
                self.learn_deleted_replicas()
                self.run_cleanups()
            except Exception:
                log.exception("clean-up round failed")

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
                        self.notifier.changed(job_id)
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
            job = self._store.get_job(cleanup.job_id)
            if cleanup.kind == CleanupKind.HOLD:
                error = self._release_hold(cleanup.region_id, cleanup.resource_id, cleanup.job_id)
            elif job is None:
                error = None
            elif cleanup.kind == CleanupKind.SOURCE:
                error = self._finish_source(job)
            else:
                error = self._remove_replica(job)
            if error is None:
                self._store.cleanup_done(cleanup.kind, cleanup.job_id)
                log.info("clean-up %s of job %s done", cleanup.kind, cleanup.job_id)
                self.notifier.changed(cleanup.job_id)
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
            self.notifier.changed(cleanup.job_id)
        return left
