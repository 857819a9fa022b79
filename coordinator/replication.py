"""Cross-region replication (M1), as users ask for it: which regions a region can replicate to
(R5; the regions are asked by coordinator/targets.py), the checks made before a replication is
accepted (coordinator/replication_rules.py; R3 atomically with the job's insertion), and the
jobs' reads. The copying itself is coordinator/job_runner.py; what an ended job still owes the
nodes, coordinator/job_cleanups.py. Plain Python: nodes are reached only through csbs.clients."""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence

from coordinator.config import CoordinatorConfig
from coordinator.job_cleanups import JobCleanups, node_client
from coordinator.job_runner import PROGRESS_EVERY, JobRunner
from coordinator.links import Links
from coordinator.models import (
    ACTIVE_STATUSES,
    JobFilter,
    JobStatus,
    Page,
    Progress,
    RegionListing,
    ReplicateRequest,
    ReplicationJob,
    ReplicationTarget,
)
from coordinator.replication_rules import (
    check_replicable,
    default_replica_name,
    job_parameters,
    own_project,
    same_request,
)
from coordinator.sim_waits import SimulatedWaits
from coordinator.store import Store
from coordinator.targets import TargetFinder
from csbs import request_ids
from csbs.clients import RegionNodeClient, RegionNodes, is_transient
from csbs.clock import Clock
from csbs.errors import (
    CsbsError,
    InvalidArgument,
    NotFound,
    RegionNotFound,
    RegionRefusesReplication,
    ReplicaAlreadyExists,
    ReplicationJobNotFound,
    TargetProjectNotFound,
    Unavailable,
)
from csbs.names import validate_description, validate_name, validate_request_id
from csbs.node_views import RegionSummary
from csbs.notifier import Notifier
from csbs.paging import PageTokens, page_size
from csbs.tally import Tally

log = logging.getLogger(__name__)

R3_ROUNDS = 5
CLEANUP_BACKOFF_MAX = 60.0  # seconds between two tries of a clean-up a node refused


class ReplicationService:
    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Clock,
        nodes: RegionNodes,
        store: Store,
        tally: Tally | None = None,
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
        # The links between regions (issue 13), and what AdvanceClock steps through.
        self.links = Links(store, nodes.region_ids, config.links)
        self.waits = SimulatedWaits(clock, config.workers)
        self._cleanups = JobCleanups(config, clock, nodes, store, self.notifier, self._stop)
        self._runner = JobRunner(
            config,
            clock,
            nodes,
            store,
            self.notifier,
            self._stop,
            self._cleanups,
            self.links,
            self.waits,
            tally or Tally(),
        )
        self._targets = TargetFinder(nodes, config.targets_timeout_seconds)
        for job_id in self._store.active_job_ids():
            log.info("resuming replication job %s", job_id)
            self._runner.submit(job_id)
        self._cleaner = threading.Thread(target=self._cleanups.loop, name="cleanup", daemon=True)
        self._cleaner.start()

    def close(self) -> None:
        """Stops copying (unfinished jobs resume on the next start)."""
        self._stop.set()
        self._runner.close()
        self._targets.close()
        self._cleaner.join()

    # -- helpers ---------------------------------------------------------------------------------
    def _client(self, region_id: str, account_id: str) -> RegionNodeClient:
        return node_client(self._nodes, region_id, account_id)

    def _region_info(self, region_id: str, account_id: str) -> RegionSummary:
        return self._client(region_id, account_id).region_info()

    # -- targets (R5) ----------------------------------------------------------------------------
    def list_targets(self, account_id: str, source_region_id: str) -> list[ReplicationTarget]:
        """Every other region that accepts replication now, as it says itself at this call
        (R5), with the caller's projects there (P3); one that does not answer within a short
        deadline is listed as unreachable (coordinator/targets.py)."""
        return self._targets.list(account_id, source_region_id)

    def list_regions(self, account_id: str) -> Sequence[RegionListing]:
        """Every region of the cluster with the caller's projects there and where its node
        listens (coordinator/targets.py)."""
        return self._targets.regions(account_id)

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
                return same_request(existing, self._asked(request, existing), token)

        backup = source.get_backup(source_project_id, backup_id)
        check_replicable(backup)

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
        name = validate_name(
            request.name or default_replica_name(request.way, backup.backup_id), "name"
        )

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
            source_backup_at=backup.created_at,
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
            self._runner.submit(job.job_id)
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
        return {
            "source_region_id": request.source_region_id,
            "backup_id": request.backup_id,
            "target_region_id": request.target_region_id,
            "target_project_id": target_project,
            "name": request.name or default_replica_name(request.way, request.backup_id),
            "description": request.description,
            "way": request.way.name,
            "policy_id": request.policy_id,
        }

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
                        return same_request(existing, job_parameters(job), token)
                active = self._store.jobs_to(
                    conn, job.source_backup_id, job.target_region_id, ACTIVE_STATUSES
                )
                if active:
                    raise ReplicaAlreadyExists(
                        job.source_backup_id, job.target_region_id, active[0].job_id
                    )
                to_check = [
                    j
                    for j in self._store.jobs_to(
                        conn, job.source_backup_id, job.target_region_id, [JobStatus.SUCCESS]
                    )
                    if j.job_id not in known_gone and not j.replica_deleted
                ]
                if not to_check:
                    # The job's calls carry this request's ID, a resumed job's too (issue 14).
                    self._store.insert_job(conn, job, token, request_ids.current())
                    return job
            for earlier in to_check:
                if self._replica_exists(target, earlier):
                    raise ReplicaAlreadyExists(
                        job.source_backup_id,
                        job.target_region_id,
                        earlier.job_id,
                        earlier.replica_id,
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

    # -- clean-ups (coordinator/job_cleanups.py) ---------------------------------------------
    def run_cleanups(self) -> int:
        return self._cleanups.run_cleanups()

    def learn_deleted_replicas(self) -> int:
        return self._cleanups.learn_deleted_replicas()
