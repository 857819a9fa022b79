"""The runs of a policy: their state machine, and its recovery at start.

A run is recorded RUNNING (or SKIPPED: the skip rule), then goes in two steps: it starts its
work (backups of every protected server, or replication jobs for every backup the policy made
that never reached the target region) and records what it started, then waits for that work
to end, applies retention and is FINISHED; an error in either step makes it FAILED with the
reason. Every run leaves a record: what it did, skipped (and which rule said so: see
coordinator/policy_rules.py) and failed (and why). Nodes are reached through csbs.clients,
replication through the ReplicationService (the same rule checks as M1).

Across crashes: a run's first step is idempotent (its backups are keyed by the run and the
server's place in the policy, its jobs by a token made of the run and the backup), so at start
`recover` does that step again for every run left RUNNING, which re-attaches it to what it had
started, and takes it to its end; a run whose policy is gone is FAILED with the reason. What a
run could not finish (retention, say), the next run picks up."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime

from coordinator.cluster_clock import ClusterClock
from coordinator.models import JobStatus, ReplicateRequest
from coordinator.policy_models import (
    FAILED,
    FINISHED,
    KIND_BACKUP,
    KIND_NAMES,
    RESTARTED,
    RUNNING,
    TRIGGER_EXECUTE_NOW,
    Policy,
    PolicyRun,
    RunItem,
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
from coordinator.replication import ReplicationService
from coordinator.retention import server_of_replica
from coordinator.sim_waits import SimulatedWaits
from coordinator.store import Store
from csbs import request_ids
from csbs.clients import RegionNodeClient, RegionNodes
from csbs.errors import CsbsError, RegionRefusesReplication
from csbs.node_views import BackupStatus, BackupSummary, ReplicationWay

log = logging.getLogger(__name__)

WAIT_POLL = 0.1
WORK_TIMEOUT = 6 * 3600.0  # a run gives up waiting for its backups or jobs after this


@dataclass
class _Work:
    """What the first step of a run started, for its second step to wait on."""

    backups: list[tuple[str, str]] = field(default_factory=list)  # (server_id, backup_id)
    jobs: list[tuple[str, str, str]] = field(default_factory=list)  # (backup, server, job)


def run_request_id(run: PolicyRun) -> str:
    """A policy run's request ID (issue 14): its own ID's hex, so that a resumed run keeps it
    and every call its backups and jobs make carries it."""
    return uuid.UUID(run.run_id).hex


def _run_token(run_id: str, backup_id: str) -> str:
    """The idempotency token of the job a run starts for a backup: the run finds its own jobs
    again when it re-attaches after a crash."""
    return "run-" + hashlib.sha256(f"{run_id}/{backup_id}".encode()).hexdigest()[:40]


class PolicyRunner:
    """Carries out the policies' runs (see the module's docstring)."""

    def __init__(
        self,
        policies: PolicyStore,
        store: Store,
        clock: ClusterClock,
        nodes: RegionNodes,
        replication: ReplicationService,
        waits: SimulatedWaits,
    ) -> None:
        self._policies = policies
        self._waits = waits
        self._store = store  # the jobs a run started, by its token
        self._clock = clock
        self._nodes = nodes
        self._replication = replication
        self._lock = threading.Lock()
        self._deleted: set[str] = set()
        self._recovered = threading.Event()

    def wait_recovered(self) -> None:
        """Returns once the runs a crash left RUNNING have ended (recover)."""
        self._recovered.wait()

    def new_run(
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

    def carry_out(self, policy: Policy, run: PolicyRun, wait: bool) -> PolicyRun:
        """Starts a recorded RUNNING run's work and, with `wait`, runs it to its end; without,
        its end follows in the background. Answers with the run as it is then."""
        if run.status != RUNNING:
            return run
        log.info(
            "policy %s: %s run %s, request ID %s",
            policy.policy_id,
            KIND_NAMES[run.kind],
            run.run_id,
            run_request_id(run),
        )
        with request_ids.bound(run_request_id(run)):
            return self._carry_out(policy, run, wait)

    def _carry_out(self, policy: Policy, run: PolicyRun, wait: bool) -> PolicyRun:
        run, work = self._start(policy, run)
        if run.status != RUNNING:
            return run
        if wait and not self._waits_for_clock(run):
            return self._finish_safely(policy, run, work)
        # Waited for by AdvanceClock only if AdvanceClock started it (an execute-now run goes
        # on beside it, as in wall mode).
        self._finish_in_background(policy, run, work, advance_waits=wait)
        return run

    def _waits_for_clock(self, run: PolicyRun) -> bool:
        """In simulated mode a replication run's jobs may wait for the cluster clock (a limited
        link, issue 13): AdvanceClock cannot wait for its end before moving the clock, so its
        end is waited for in the background, and AdvanceClock steps through it
        (coordinator/sim_waits.py)."""
        return self._clock.simulated and run.kind != KIND_BACKUP

    def _finish_in_background(
        self, policy: Policy, run: PolicyRun, work: _Work, advance_waits: bool
    ) -> threading.Thread:
        # Known to AdvanceClock before the thread starts, so that it never moves the clock
        # between a run's jobs ending and the run recording its end.
        if advance_waits:
            self._waits.run_waiting(run.run_id, tuple(job_id for _, _, job_id in work.jobs))

        def finish() -> None:
            try:
                with request_ids.bound(run_request_id(run)):
                    self._finish_safely(policy, run, work)
            finally:
                if advance_waits:
                    self._waits.run_done(run.run_id)

        thread = threading.Thread(target=finish, daemon=True, name=f"run-{run.run_id[:8]}")
        thread.start()
        return thread

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

    # -- after a crash ----------------------------------------------------------------------
    def recover(self) -> None:
        """Ends every run a killed coordinator left RUNNING: if its policy is still there the
        run re-attaches to the backups and jobs it started (its first step again, which is
        idempotent) and goes to its end; otherwise it is FAILED with the reason. What a run
        could not finish (retention, say), the next run picks up."""
        try:
            ending = []
            for run in self._policies.running():
                log.info("policy %s: run %s was left running; resuming", run.policy_id, run.run_id)
                run = replace(run, reason=RESTARTED)
                policy = self._policies.load(run.policy_id)
                if policy is None:
                    self._policies.save_run(
                        replace(
                            run,
                            status=FAILED,
                            finished_at=self._clock.now(),
                            reason=f"{RESTARTED}, and its policy has been deleted since",
                        )
                    )
                    continue
                with request_ids.bound(run_request_id(run)):
                    run, work = self._start(policy, run)
                if run.status == RUNNING:
                    thread = self._finish_in_background(policy, run, work, advance_waits=True)
                    if not self._waits_for_clock(run):
                        ending.append(thread)
            # Simulated mode: a replication run ends as AdvanceClock moves the clock (its jobs
            # may wait for it), so it is not waited for here.
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

    def policy_deleted(self, policy_id: str) -> None:
        """A run of this policy still going finishes what it started, then stops: no
        retention after the policy is gone."""
        with self._lock:
            self._deleted.add(policy_id)

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
        items: list[RunItem] = []
        deadline = time.monotonic() + WORK_TIMEOUT
        for server_id, backup_id in work.backups:
            while True:
                # The node's address is looked up at every poll: a node that restarted on
                # another address is followed (a client kept for the whole wait retried the
                # old address until WORK_TIMEOUT, and the run and AdvanceClock hung).
                client = self._nodes.client(policy.region_id, policy.account_id)
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
                reason=f"{RegionRefusesReplication(target).message}; nothing was replicated",
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
        # In simulated mode a job may wait for the cluster clock for any wall time: only the
        # clock (the jobs' simulated budgets) ends it.
        deadline = time.monotonic() + (float("inf") if self._clock.simulated else WORK_TIMEOUT)
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
