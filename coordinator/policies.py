"""Backup policies (with replication: M2, and execute-now: M3), their runs, retention, and the
scheduler that runs them on the cluster clock.

A run is two steps: it starts its work (backups of every protected server, or replication jobs
for every backup the policy made that never reached the target region), then waits for that
work to end and applies retention. Every run leaves a record: what it did, skipped (and which
rule said so) and failed (and why). A run still going when the next one of its policy and kind
falls due makes that one skipped, not queued. Plain Python: nodes are reached through
csbs.clients, replication through the ReplicationService (the same rule checks as M1).

Across crashes: a due run is recorded in the same transaction that moves its schedule on, so
each is recorded exactly once. A run's first step is idempotent (its backups are keyed by the
run and the server's place in the policy, its jobs by a token made of the run and the backup),
so at start every run left RUNNING does that step again, which re-attaches it to what it had
started, and goes to its end; a run whose policy is gone is FAILED with the reason. The skip
rule asks the catalog, not memory, and AdvanceClock first lets those runs end."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from coordinator.cluster_clock import ClusterClock
from coordinator.errors import IdempotencyTokenReused
from coordinator.models import JobStatus, Page, ReplicateRequest
from coordinator.policy_models import (
    FAILED,
    FINISHED,
    KIND_BACKUP,
    KIND_NAMES,
    KIND_REPLICATION,
    RESTARTED,
    RUNNING,
    TRIGGER_EXECUTE_NOW,
    TRIGGER_SCHEDULE,
    Policy,
    PolicyNotFound,
    PolicyRun,
    RunItem,
    request_parameters,
)
from coordinator.policy_rules import (
    backups_retention_deletes,
    choose_replication,
    kept_for_image,
    policy_replicas,
    replicas_retention_deletes,
    skip_if_going,
)
from coordinator.policy_store import PolicyStore
from coordinator.policy_validation import (
    check_definition,
    check_server_count,
    check_servers,
    check_update_fields,
)
from coordinator.replication import ReplicationService
from coordinator.retention import server_of_replica
from coordinator.store import Store
from csbs.clients import BackupStatus, BackupSummary, RegionNodeClient, RegionNodes, ReplicationWay
from csbs.errors import (
    CsbsError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from csbs.names import validate_request_id
from csbs.paging import PageTokens, page_size

log = logging.getLogger(__name__)

WAIT_POLL = 0.1
WORK_TIMEOUT = 6 * 3600.0  # a run gives up waiting for its backups or jobs after this


@dataclass
class _Work:
    """What the first step of a run started, for its second step to wait on."""

    backups: list[tuple[str, str]] = field(default_factory=list)  # (server_id, backup_id)
    jobs: list[tuple[str, str, str]] = field(default_factory=list)  # (backup, server, job)


def _run_token(run_id: str, backup_id: str) -> str:
    """The idempotency token of the job a run starts for a backup: the run finds its own jobs
    again when it re-attaches after a crash."""
    return "run-" + hashlib.sha256(f"{run_id}/{backup_id}".encode()).hexdigest()[:40]


class PolicyService:
    def __init__(
        self,
        store: Store,
        clock: ClusterClock,
        nodes: RegionNodes,
        replication: ReplicationService,
    ) -> None:
        self._store = store
        self._policies = PolicyStore(store)
        self._clock = clock
        self._nodes = nodes
        self._replication = replication
        self._tokens = PageTokens(
            store.setting("page_token_secret", secrets.token_hex(32)).encode()
        )
        self._lock = threading.Lock()
        self._deleted: set[str] = set()
        self._recovered = threading.Event()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._advance_lock = threading.Lock()
        self._scheduler: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts following the schedules (wall mode; in simulated mode AdvanceClock runs them)."""
        self._clock.push()
        threading.Thread(target=self._recover, name="recover-runs", daemon=True).start()
        if not self._clock.simulated:
            self._scheduler = threading.Thread(target=self._schedule_loop, name="scheduler")
            self._scheduler.daemon = True
            self._scheduler.start()

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)

    # -- CRUD -------------------------------------------------------------------------------------
    def _schedule_times(self, policy: Policy, after: datetime) -> tuple[float | None, float | None]:
        backup = policy.backup_schedule.next_after(after) if policy.enabled else None
        repl = policy.replication
        replication = (
            repl.schedule.next_after(after) if policy.enabled and repl and repl.enabled else None
        )
        return (
            None if backup is None else backup.timestamp(),
            None if replication is None else replication.timestamp(),
        )

    def create(self, account_id: str, policy: Policy, request_id: str) -> Policy:
        validate_request_id(request_id)
        # Request IDs are the account's own: another account's never answers for it.
        request_key = f"{account_id}/{request_id}"
        if request_id:
            made = self._policies.request(request_key)
            if made is not None:
                return self._same_request(account_id, policy, request_id, *made)
        now = self._clock.now()
        policy = replace(
            policy,
            policy_id=str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
            account_id=account_id,
        )
        policy = check_definition(self._nodes, policy)
        check_servers(self._nodes, policy, policy.server_ids)
        times = self._schedule_times(policy, now)
        with self._policies.transaction() as conn:
            self._policies.insert(
                conn,
                policy,
                times,
                request_key if request_id else "",
                json.dumps(request_parameters(policy)),
            )
        self._wake_scheduler()
        return self._load(policy.policy_id)

    def _same_request(
        self, account_id: str, asked: Policy, request_id: str, policy_id: str, first: str
    ) -> Policy:
        """The policy a request ID already made, if asked with the same parameters (defaults
        filled in as the policy records them); INVALID_ARGUMENT naming the request ID and the
        first parameter that differs otherwise."""
        existing = self.get(account_id, policy_id)
        if not first:  # made before parameters were kept with the request ID
            return existing
        recorded = json.loads(first)
        now = request_parameters(
            check_definition(
                self._nodes, replace(asked, account_id=account_id), check_capability=False
            )
        )
        for name, value in json.loads(json.dumps(now)).items():
            if recorded.get(name) != value:
                raise IdempotencyTokenReused(
                    "request_id", request_id, policy_id, "policy", name, recorded.get(name), value
                )
        return existing

    def _load(self, policy_id: str) -> Policy:
        """A policy, whoever's it is (the scheduler's view)."""
        if not policy_id:
            raise InvalidArgument("policy_id is required")
        policy = self._policies.load(policy_id)
        if policy is None:
            raise PolicyNotFound(policy_id)
        return policy

    def get(self, account_id: str, policy_id: str) -> Policy:
        """A policy of the account; another account's is not found, as if it never existed."""
        policy = self._load(policy_id)
        if policy.account_id != account_id:
            raise PolicyNotFound(policy_id)
        return policy

    def list_policies(
        self, account_id: str, region_id: str, project_id: str, size: int, token: str
    ) -> Page[Policy]:
        limit = page_size(size)
        scope = f"policies/{account_id}/{region_id}/{project_id}"
        after = self._tokens.open(scope, token)
        items, last = self._policies.page(account_id, region_id, project_id, after, limit)
        return Page(items, "" if last is None else self._tokens.issue(scope, last))

    def update(self, account_id: str, change: Policy, fields: list[str]) -> Policy:
        changed = check_update_fields(fields)
        current = self.get(account_id, change.policy_id)
        updates = {f: getattr(change, f) for f in changed}
        now = self._clock.now()
        policy = check_definition(self._nodes, replace(current, **updates, updated_at=now))
        times = self._schedule_times(policy, now)
        with self._policies.transaction() as conn:
            self._policies.update(conn, policy, times)
        self._wake_scheduler()
        return self._load(policy.policy_id)

    def delete(self, account_id: str, policy_id: str) -> None:
        """Deletes a policy. A run in flight finishes what it started (its backups and jobs end,
        nothing is left half-done), then stops; the backups it made are kept."""
        self.get(account_id, policy_id)
        self._policies.delete(policy_id)
        with self._lock:
            self._deleted.add(policy_id)
        self._wake_scheduler()

    def set_servers(
        self, account_id: str, policy_id: str, server_ids: list[str], add: bool
    ) -> Policy:
        policy = self.get(account_id, policy_id)
        if add:
            new = tuple(s for s in server_ids if s not in policy.server_ids)
            check_servers(self._nodes, policy, server_ids)
            servers = policy.server_ids + new
        else:
            missing = [s for s in server_ids if s not in policy.server_ids]
            if missing:
                raise NotFound("server", f"{missing[0]} in policy {policy_id}")
            servers = tuple(s for s in policy.server_ids if s not in server_ids)
            new = ()
        policy = replace(policy, server_ids=servers, updated_at=self._clock.now())
        with self._policies.transaction() as conn:
            if add:
                self._policies.add_servers(conn, policy_id, new)
            else:
                self._policies.remove_servers(conn, server_ids)
            # Checked after add_servers (rolled back): a server in another policy is named first.
            check_server_count(servers)
            self._policies.update(conn, policy)
        return self._load(policy_id)

    # -- runs: records ----------------------------------------------------------------------------
    def list_runs(self, account_id: str, policy_id: str, size: int, token: str) -> Page[PolicyRun]:
        self.get(account_id, policy_id)  # NOT_FOUND for a policy not of this account
        limit = page_size(size)
        scope = f"runs/{policy_id}"
        after = self._tokens.open(scope, token)
        items, last = self._policies.runs_page(policy_id, after, limit)
        return Page(items, "" if last is None else self._tokens.issue(scope, last))

    # -- runs: doing ------------------------------------------------------------------------------
    def execute(self, account_id: str, policy_id: str, kind: int) -> PolicyRun:
        """M3 (and execute-now of the backup part): starts the run at once and answers with
        what it started; the run goes on in the background (waiting, then retention)."""
        if kind not in (KIND_BACKUP, KIND_REPLICATION):
            raise InvalidArgument("kind must be BACKUP or REPLICATION")
        policy = self.get(account_id, policy_id)
        if kind == KIND_REPLICATION and policy.replication is None:
            raise FailedPrecondition(f"policy {policy_id} has no replication rule")
        with self._policies.transaction() as conn:
            run = self._new_run(conn, policy, kind, TRIGGER_EXECUTE_NOW, self._clock.now())
        return self._carry_out(policy, run, wait=False)

    def _new_run(
        self,
        conn: sqlite3.Connection,
        policy: Policy,
        kind: int,
        trigger: int,
        scheduled_at: datetime,
    ) -> PolicyRun:
        """Records a run RUNNING, or SKIPPED if one of its policy and kind is still going (the
        skip rule), in the caller's transaction."""
        run = PolicyRun(
            run_id=str(uuid.uuid4()),
            policy_id=policy.policy_id,
            kind=kind,
            trigger=trigger,
            status=RUNNING,
            scheduled_at=scheduled_at,
            started_at=self._clock.now(),
        )
        going = self._policies.going(conn, policy.policy_id, kind)
        run = skip_if_going(run, going, self._clock.now())
        self._policies.save_run(run, conn)
        return run

    def _carry_out(self, policy: Policy, run: PolicyRun, wait: bool) -> PolicyRun:
        """Starts a recorded RUNNING run's work and, with `wait`, runs it to its end; without,
        its end follows in the background. Answers with the run as it is then."""
        if run.status != RUNNING:
            return run
        run, work = self._start(policy, run)
        if run.status != RUNNING:
            return run
        if wait:
            return self._finish_safely(policy, run, work)
        threading.Thread(
            target=self._finish_safely,
            args=(policy, run, work),
            daemon=True,
            name=f"run-{run.run_id[:8]}",
        ).start()
        return run

    def _start(self, policy: Policy, run: PolicyRun) -> tuple[PolicyRun, _Work]:
        """The first step of a run: starts its backups or replication jobs and records them.
        Idempotent (each backup and job is keyed by the run), so that a run the coordinator
        was killed in re-attaches to what it started by doing this step again."""
        work = _Work()
        try:
            if run.kind == KIND_BACKUP:
                run = self._start_backups(policy, run, work)
            else:
                run = self._start_replications(policy, run, work)
        except Exception as exc:
            log.exception(
                "policy %s: %s run failed to start", policy.policy_id, KIND_NAMES[run.kind]
            )
            reason = exc.message if isinstance(exc, CsbsError) else str(exc)
            run = replace(
                run,
                status=FAILED,
                finished_at=self._clock.now(),
                reason=f"{run.reason}; {reason}" if run.reason else reason,
            )
        self._policies.save_run(run)
        return run, work

    def _finish_safely(self, policy: Policy, run: PolicyRun, work: _Work) -> PolicyRun:
        try:
            run = self._finish(policy, run, work)
        except Exception as exc:
            log.exception("policy %s: run %s failed", policy.policy_id, run.run_id)
            run = replace(run, status=FAILED, finished_at=self._clock.now(), reason=str(exc))
        self._policies.save_run(run)
        return run

    # -- runs: after a crash ----------------------------------------------------------------------
    def _recover(self) -> None:
        """Ends every run a killed coordinator left RUNNING: if its policy is still there the
        run re-attaches to the backups and jobs it started (its first step again, which is
        idempotent) and goes to its end; otherwise it is FAILED with the reason. What a run
        could not finish (retention, say), the next run picks up."""
        try:
            ending = []
            for run in self._policies.running():
                log.info("policy %s: run %s was left running; resuming", run.policy_id, run.run_id)
                run = replace(run, reason=RESTARTED)
                try:
                    policy = self._load(run.policy_id)
                except PolicyNotFound:
                    self._policies.save_run(
                        replace(
                            run,
                            status=FAILED,
                            finished_at=self._clock.now(),
                            reason=f"{RESTARTED}, and its policy has been deleted since",
                        )
                    )
                    continue
                run, work = self._start(policy, run)
                if run.status == RUNNING:
                    thread = threading.Thread(
                        target=self._finish_safely,
                        args=(policy, run, work),
                        daemon=True,
                        name=f"run-{run.run_id[:8]}",
                    )
                    thread.start()
                    ending.append(thread)
            for thread in ending:
                thread.join()
        except Exception:
            log.exception("resuming the runs left running failed")
        finally:
            self._recovered.set()

    def _finish(self, policy: Policy, run: PolicyRun, work: _Work) -> PolicyRun:
        items = list(run.items)
        if run.kind == KIND_BACKUP:
            items += self._wait_backups(policy, work)
            if not self._is_deleted(policy.policy_id):
                items += self._apply_retention(policy)
        else:
            items += self._wait_jobs(policy, work)
            if not self._is_deleted(policy.policy_id):
                items += self._apply_replica_retention(policy)
        reason = run.reason
        if self._is_deleted(policy.policy_id):
            reason = "the policy was deleted during this run; what it started has ended"
        return replace(
            run, status=FINISHED, finished_at=self._clock.now(), items=tuple(items), reason=reason
        )

    def _is_deleted(self, policy_id: str) -> bool:
        with self._lock:
            return policy_id in self._deleted

    # -- backup runs ------------------------------------------------------------------------------
    def _start_backups(self, policy: Policy, run: PolicyRun, work: _Work) -> PolicyRun:
        client = self._nodes.client(policy.region_id, policy.account_id)
        items: list[RunItem] = []
        stamp = run.scheduled_at.strftime("%Y%m%d%H%M%S")
        for index, server_id in enumerate(policy.server_ids):
            try:
                backup = client.create_policy_backup(
                    policy.project_id,
                    server_id,
                    name=f"autobk_{stamp}_{index}",
                    policy_id=policy.policy_id,
                    request_id=f"{run.run_id}-{index}",
                )
            except CsbsError as exc:
                items.append(RunItem("failed", server_id=server_id, reason=exc.message))
                continue
            work.backups.append((server_id, backup.backup_id))
            items.append(RunItem("backed_up", backup_id=backup.backup_id, server_id=server_id))
        return replace(run, items=tuple(items))

    def _wait_backups(self, policy: Policy, work: _Work) -> list[RunItem]:
        client = self._nodes.client(policy.region_id, policy.account_id)
        items: list[RunItem] = []
        deadline = time.monotonic() + WORK_TIMEOUT
        for server_id, backup_id in work.backups:
            while True:
                try:
                    backup = client.get_backup(policy.project_id, backup_id)
                except CsbsError as exc:
                    if time.monotonic() > deadline or not getattr(exc, "transient", False):
                        items.append(RunItem("failed", backup_id, server_id, reason=exc.message))
                        break
                    time.sleep(WAIT_POLL)
                    continue
                if backup.status == BackupStatus.ERROR:
                    items.append(
                        RunItem("failed", backup_id, server_id, reason=backup.error_reason)
                    )
                    break
                if backup.status != BackupStatus.CREATING:
                    break
                if time.monotonic() > deadline:
                    items.append(RunItem("failed", backup_id, server_id, reason="timed out"))
                    break
                time.sleep(WAIT_POLL)
        return items

    def _apply_retention(self, policy: Policy) -> list[RunItem]:
        """Deletes what the retention rule no longer keeps: only backups this policy made,
        never one with an image or being replicated (kept, and tried again next run)."""
        rule = policy.retention
        if not rule.keep_count and not rule.keep_days:
            return []  # nothing to ask the node for
        client = self._nodes.client(policy.region_id, policy.account_id)
        backups = client.list_backups(policy.project_id, policy_id=policy.policy_id)
        victims = backups_retention_deletes(policy, backups, self._clock.now())
        return [self._delete(client, policy.project_id, b, "retention") for b in victims]

    def _delete(
        self, client: RegionNodeClient, project_id: str, backup: BackupSummary, why: str
    ) -> RunItem:
        kept = kept_for_image(backup, why)
        if kept is not None:
            return kept
        try:
            client.delete_backup(project_id, backup.backup_id)
        except CsbsError as exc:
            return RunItem("kept", backup.backup_id, backup.server_id, reason=f"{why}: {exc}")
        return RunItem("deleted", backup.backup_id, backup.server_id, reason=why)

    # -- replication runs (M2, M3) ----------------------------------------------------------------
    def _start_replications(self, policy: Policy, run: PolicyRun, work: _Work) -> PolicyRun:
        repl = policy.replication
        if repl is None:
            return replace(
                run,
                status=FINISHED,
                finished_at=self._clock.now(),
                reason="the policy has no replication rule",
            )
        target = repl.target_region_id
        info = self._nodes.client(target, policy.account_id).region_info()
        if not info.accepts_replication:
            return replace(
                run,
                status=FINISHED,
                finished_at=self._clock.now(),
                reason=f"R5: target region {target} does not accept replication now; nothing "
                "was replicated",
            )
        way = (
            ReplicationWay.POLICY_EXECUTE
            if run.trigger == TRIGGER_EXECUTE_NOW
            else ReplicationWay.POLICY
        )
        source = self._nodes.client(policy.region_id, policy.account_id)
        items: list[RunItem] = []
        for backup in source.list_backups(policy.project_id, policy_id=policy.policy_id):
            token = _run_token(run.run_id, backup.backup_id)
            with self._store.read() as conn:
                started = self._store.job_by_token(conn, policy.project_id, token)
                jobs = (
                    []
                    if started is not None
                    else self._store.jobs_to(conn, backup.backup_id, target, list(JobStatus))
                )
            choice = choose_replication(
                backup.backup_id, target, None if started is None else started.job_id, jobs
            )
            if choice.attach_job_id:  # this run started it before the coordinator restarted
                work.jobs.append((backup.backup_id, backup.server_id, choice.attach_job_id))
                continue
            if choice.skip_reason:
                items.append(
                    RunItem(
                        "skipped", backup.backup_id, backup.server_id, reason=choice.skip_reason
                    )
                )
                continue
            try:
                job = self._replication.replicate(
                    ReplicateRequest(
                        source_region_id=policy.region_id,
                        source_project_id=policy.project_id,
                        backup_id=backup.backup_id,
                        target_region_id=target,
                        target_project_id=repl.target_project_id,
                        way=way,
                        policy_id=policy.policy_id,
                        account_id=policy.account_id,
                        idempotency_token=token,
                    )
                )
            except CsbsError as exc:
                items.append(
                    RunItem("skipped", backup.backup_id, backup.server_id, reason=exc.message)
                )
                continue
            work.jobs.append((backup.backup_id, backup.server_id, job.job_id))
        return replace(run, items=tuple(items), job_ids=tuple(j for _, _, j in work.jobs))

    def _wait_jobs(self, policy: Policy, work: _Work) -> list[RunItem]:
        items = []
        deadline = time.monotonic() + WORK_TIMEOUT
        for backup_id, server_id, job_id in work.jobs:
            job = self._replication.get_job(policy.account_id, job_id)
            while job.status not in (JobStatus.SUCCESS, JobStatus.FAILED):
                if time.monotonic() > deadline:
                    break
                time.sleep(WAIT_POLL)
                job = self._replication.get_job(policy.account_id, job_id)
            if job.status == JobStatus.SUCCESS:
                items.append(RunItem("replicated", backup_id, server_id, job_id))
            else:
                items.append(RunItem("failed", backup_id, server_id, job_id, job.failure_reason))
        return items

    def _apply_replica_retention(self, policy: Policy) -> list[RunItem]:
        """Keeps the newest N replicas of each protected server that this policy made in the
        target region (as backup retention counts per server); never deletes one that has an
        image."""
        repl = policy.replication
        if repl is None or not repl.replica_keep_count:
            return []
        client = self._nodes.client(repl.target_region_id, policy.account_id)
        replicas = policy_replicas(policy, client.list_backups(repl.target_project_id))
        if not replicas:
            return []
        server_of_job = self._store.source_servers([r.origin.replication_job_id for r in replicas])
        source = self._nodes.client(policy.region_id, policy.account_id)
        server_of_backup = {
            b.backup_id: b.server_id
            for b in source.list_backups(policy.project_id, policy_id=policy.policy_id)
        }
        victims = replicas_retention_deletes(
            policy,
            replicas,
            lambda r: server_of_replica(
                r.origin.source_backup_id,
                r.origin.replication_job_id,
                server_of_job,
                server_of_backup,
            ),
            self._clock.now(),
        )
        return [
            self._delete(client, repl.target_project_id, b, "replica retention") for b in victims
        ]

    # -- the scheduler ----------------------------------------------------------------------------
    def _wake_scheduler(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _next_due(self, until: datetime | None) -> tuple[datetime, str, int] | None:
        """The earliest (time, policy, kind) falling due, at or before `until` if given;
        backups before replications at the same instant."""
        due: list[tuple[float, int, str]] = []
        for policy_id, backup_at, repl_at in self._policies.due_times():
            if backup_at is not None:
                due.append((backup_at, KIND_BACKUP, policy_id))
            if repl_at is not None:
                due.append((repl_at, KIND_REPLICATION, policy_id))
        if not due:
            return None
        at, kind, policy_id = min(due)
        when = datetime.fromtimestamp(at, UTC)
        if until is not None and when > until:
            return None
        return when, policy_id, kind

    def _claim(self, policy_id: str, kind: int, due: datetime) -> tuple[Policy, PolicyRun] | None:
        """Records the run due at `due` and moves the policy's next time of this kind past it,
        in one transaction: a crash leaves either both or neither, so every due run is recorded
        exactly once. None if the policy is gone or this time was taken already."""
        with self._policies.transaction() as conn:
            policy = self._policies.load(policy_id, conn)
            if policy is None:
                return None
            current = self._policies.next_at(conn, policy_id, kind)
            if current is None or current != due.timestamp():
                return None
            schedule = (
                policy.backup_schedule
                if kind == KIND_BACKUP
                else (policy.replication.schedule if policy.replication else None)
            )
            following = schedule.next_after(due).timestamp() if schedule else None
            self._policies.move_next_at(conn, policy_id, kind, following)
            run = self._new_run(conn, policy, kind, TRIGGER_SCHEDULE, due)
        return policy, run

    def _run_due(self, policy_id: str, kind: int, due: datetime, wait: bool) -> None:
        claimed = self._claim(policy_id, kind, due)
        if claimed is not None:
            self._carry_out(*claimed, wait=wait)

    def _schedule_loop(self) -> None:
        """Wall mode: runs what falls due, as it falls due."""
        while not self._stop.is_set():
            try:
                due = self._next_due(None)
                now = self._clock.now()
                if due is not None and due[0] <= now:
                    self._run_due(due[1], due[2], due[0], wait=False)
                    continue
                wait = 60.0 if due is None else min(60.0, (due[0] - now).total_seconds())
                with self._wake:
                    self._wake.wait(timeout=max(wait, 0.01))
            except Exception:
                log.exception("the scheduler failed; trying again")
                self._stop.wait(1.0)

    def advance(self, to: datetime) -> datetime:
        """Simulated mode: moves the clock to `to`, running everything that falls due in
        between, in order, each to its end, before returning."""
        if not self._clock.simulated:
            self._clock.move_to(to)  # refuses with the reason
        with self._advance_lock:
            self._recovered.wait()  # the runs a crash left going end first, in order
            if to < self._clock.now():
                self._clock.move_to(to)  # refuses: never backwards
            while True:
                due = self._next_due(to)
                if due is None:
                    break
                when, policy_id, kind = due
                self._clock.move_to(max(when, self._clock.now()))
                self._run_due(policy_id, kind, when, wait=True)
            return self._clock.move_to(to)
