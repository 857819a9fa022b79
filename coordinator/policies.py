"""Backup policies (with replication: M2, and execute-now: M3) as users manage them: create,
read, update, delete, the servers they protect, their runs listed and executed now. A policy's
definition is checked in coordinator/policy_validation.py and stored by
coordinator/policy_store.py; its runs are carried out by coordinator/policy_runner.py (the state
machine and its recovery at start), what a run selects, keeps and deletes is decided in
coordinator/policy_rules.py, and coordinator/policy_scheduler.py runs them as they fall due.

Across crashes: a due run is recorded in the same transaction that moves its schedule on, so
each is recorded exactly once; the runs a crash left RUNNING end at start (the runner), and
AdvanceClock first lets them end. The skip rule asks the catalog, not memory."""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from coordinator.cluster_clock import ClusterClock
from coordinator.errors import IdempotencyTokenReused
from coordinator.models import Page
from coordinator.policy_models import (
    KIND_BACKUP,
    KIND_REPLICATION,
    TRIGGER_EXECUTE_NOW,
    Policy,
    PolicyNotFound,
    PolicyRun,
    request_parameters,
)
from coordinator.policy_runner import PolicyRunner
from coordinator.policy_scheduler import PolicyScheduler, schedule_times
from coordinator.policy_store import PolicyStore
from coordinator.policy_validation import (
    check_definition,
    check_server_count,
    check_servers,
    check_update_fields,
)
from coordinator.replication import ReplicationService
from coordinator.store import Store
from csbs.clients import RegionNodes
from csbs.errors import (
    CsbsError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from csbs.names import validate_request_id
from csbs.paging import PAGE_BYTES, PageTokens, page_size


class PolicyService:
    def __init__(
        self,
        store: Store,
        clock: ClusterClock,
        nodes: RegionNodes,
        replication: ReplicationService,
        runs_page_bytes: int = PAGE_BYTES,
    ) -> None:
        self._policies = PolicyStore(store)
        self._runs_page_bytes = runs_page_bytes
        self._runner = PolicyRunner(
            self._policies, store, clock, nodes, replication, replication.waits
        )
        self._clock = clock
        self._nodes = nodes
        self._tokens = PageTokens(
            store.setting("page_token_secret", secrets.token_hex(32)).encode()
        )
        self._scheduler = PolicyScheduler(self._policies, self._runner, clock, replication.waits)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts following the schedules (wall mode; in simulated mode AdvanceClock runs them)."""
        self._clock.push()
        threading.Thread(target=self._runner.recover, name="recover-runs", daemon=True).start()
        self._scheduler.start()

    def close(self) -> None:
        self._scheduler.close()

    def advance(self, to: datetime) -> datetime:
        """Simulated mode: moves the clock to `to`, running everything that falls due in
        between, in order, each to its end, before returning."""
        return self._scheduler.advance(to)

    # -- CRUD -------------------------------------------------------------------------------------
    def create(self, account_id: str, policy: Policy, request_id: str) -> Policy:
        validate_request_id(request_id)
        # Request IDs are the account's own: another account's never answers for it.
        request_key = f"{account_id}/{request_id}"
        if request_id:
            made = self._policies.request(request_key)
            if made is not None:
                return self._same_request(account_id, policy, request_id, *made)
        asked = policy
        now = self._clock.now()
        policy = replace(
            policy,
            policy_id=str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
            account_id=account_id,
        )
        try:
            policy = check_definition(self._nodes, policy)
            check_servers(self._nodes, policy, policy.server_ids)
        except CsbsError:
            # The same request, made meanwhile by a call that raced this one, has taken its
            # servers: the answer is that policy, as for any later retry.
            made = self._policies.request(request_key) if request_id else None
            if made is None:
                raise
            return self._same_request(account_id, asked, request_id, *made)
        times = schedule_times(policy, now)
        with self._policies.transaction() as conn:
            # Asked again in the write transaction: the same request sent twice at once (a
            # double click, a client's retry racing its first try) makes one policy.
            made = self._policies.request(request_key, conn) if request_id else None
            if made is None:
                self._policies.insert(
                    conn,
                    policy,
                    times,
                    request_key if request_id else "",
                    json.dumps(request_parameters(policy)),
                )
        if made is not None:
            return self._same_request(account_id, asked, request_id, *made)
        self._scheduler.wake()
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
        times = schedule_times(policy, now)
        with self._policies.transaction() as conn:
            self._policies.update(conn, policy, times)
        self._scheduler.wake()
        return self._load(policy.policy_id)

    def delete(self, account_id: str, policy_id: str) -> None:
        """Deletes a policy. A run in flight finishes what it started (its backups and jobs end,
        nothing is left half-done), then stops; the backups it made are kept."""
        self.get(account_id, policy_id)
        self._policies.delete(policy_id)
        self._runner.policy_deleted(policy_id)
        self._scheduler.wake()

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
    def list_runs(
        self,
        account_id: str,
        policy_id: str,
        size: int,
        token: str,
        weigh: Callable[[PolicyRun], int],
    ) -> Page[PolicyRun]:
        """A page of the policy's runs, oldest first: at most `size` runs and, as `weigh` says
        what a run adds to the answer, at most the page byte budget (a run's record grows with
        the backups its policy holds; issue 12), but always at least one run."""
        self.get(account_id, policy_id)  # NOT_FOUND for a policy not of this account
        limit = page_size(size)
        scope = f"runs/{policy_id}"
        after = self._tokens.open(scope, token)
        items, last = self._policies.runs_page(
            policy_id, after, limit, weigh, self._runs_page_bytes
        )
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
            run = self._runner.new_run(conn, policy, kind, TRIGGER_EXECUTE_NOW, self._clock.now())
        return self._runner.carry_out(policy, run, wait=False)
