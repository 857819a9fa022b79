"""A backup policy and its runs, in the product's words, and their stored form: the policy's
definition and each run as versioned JSON (BODY_VERSION), and the parameters a policy's request
ID is compared by. Plain data; nothing here reaches a node or the catalog."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from coordinator.schedule import Schedule
from csbs.errors import NotFound

BODY_VERSION = 1
MAX_KEEP = 99999

KIND_BACKUP = 1
KIND_REPLICATION = 2
TRIGGER_SCHEDULE = 1
TRIGGER_EXECUTE_NOW = 2
RUNNING, FINISHED, SKIPPED, FAILED = 1, 2, 3, 4
KIND_NAMES = {KIND_BACKUP: "backup", KIND_REPLICATION: "replication"}
RESTARTED = "the coordinator restarted during the run"


class PolicyNotFound(NotFound):
    def __init__(self, policy_id: str) -> None:
        super().__init__("policy", policy_id)


@dataclass(frozen=True)
class Retention:
    keep_count: int = 0  # keep the newest N; 0: not this rule
    keep_days: int = 0  # keep for D days; 0: not this rule (both 0: keep forever)


@dataclass(frozen=True)
class PolicyReplication:
    enabled: bool
    target_region_id: str
    target_project_id: str
    schedule: Schedule
    replica_keep_count: int = 0  # keep the newest N replicas there; 0: keep all


@dataclass(frozen=True)
class Policy:
    policy_id: str
    region_id: str
    project_id: str
    name: str
    description: str
    server_ids: tuple[str, ...]
    backup_schedule: Schedule
    retention: Retention
    enabled: bool
    replication: PolicyReplication | None
    created_at: datetime
    updated_at: datetime
    next_backup_at: datetime | None = None
    next_replication_at: datetime | None = None
    account_id: str = ""  # the account that made it: no other sees or runs it (issue 6)


@dataclass(frozen=True)
class RunItem:
    action: str  # backed_up, replicated, skipped, failed, deleted, kept
    backup_id: str = ""
    server_id: str = ""
    job_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class PolicyRun:
    run_id: str
    policy_id: str
    kind: int
    trigger: int
    status: int
    scheduled_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    items: tuple[RunItem, ...] = ()
    job_ids: tuple[str, ...] = ()
    reason: str = ""


# -- the stored form of a policy and a run -------------------------------------------------------
def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def policy_body(policy: Policy) -> str:
    body = asdict(policy)
    for key in ("created_at", "updated_at", "next_backup_at", "next_replication_at"):
        body.pop(key, None)
    body["version"] = BODY_VERSION
    body["created_at"] = _when(policy.created_at)
    body["updated_at"] = _when(policy.updated_at)
    return json.dumps(body)


def policy_from_row(body: str, next_backup: float | None, next_repl: float | None) -> Policy:
    raw = json.loads(body)
    if raw.get("version") != BODY_VERSION:
        raise ValueError(f"policy body version {raw.get('version')} is not {BODY_VERSION}")
    repl = raw["replication"]
    return Policy(
        policy_id=raw["policy_id"],
        region_id=raw["region_id"],
        project_id=raw["project_id"],
        name=raw["name"],
        description=raw["description"],
        server_ids=tuple(raw["server_ids"]),
        backup_schedule=Schedule(**raw["backup_schedule"]),
        retention=Retention(**raw["retention"]),
        enabled=raw["enabled"],
        replication=None
        if repl is None
        else PolicyReplication(
            enabled=repl["enabled"],
            target_region_id=repl["target_region_id"],
            target_project_id=repl["target_project_id"],
            schedule=Schedule(**repl["schedule"]),
            replica_keep_count=repl["replica_keep_count"],
        ),
        created_at=datetime.fromisoformat(raw["created_at"]),
        updated_at=datetime.fromisoformat(raw["updated_at"]),
        next_backup_at=None if next_backup is None else datetime.fromtimestamp(next_backup, UTC),
        next_replication_at=None if next_repl is None else datetime.fromtimestamp(next_repl, UTC),
        account_id=raw.get("account_id", "default"),
    )


def run_body(run: PolicyRun) -> str:
    body: dict[str, Any] = asdict(run)
    for key in ("scheduled_at", "started_at", "finished_at"):
        body[key] = _when(getattr(run, key))
    body["version"] = BODY_VERSION
    return json.dumps(body)


def run_from_body(body: str) -> PolicyRun:
    raw = json.loads(body)
    raw.pop("version", None)
    return PolicyRun(
        **{
            **raw,
            "scheduled_at": datetime.fromisoformat(raw["scheduled_at"]),
            "started_at": _parse_when(raw["started_at"]),
            "finished_at": _parse_when(raw["finished_at"]),
            "items": tuple(RunItem(**i) for i in raw["items"]),
            "job_ids": tuple(raw["job_ids"]),
        }
    )


def request_parameters(policy: Policy) -> dict[str, Any]:
    """What a policy was created with, by the request's field names (defaults filled in): a
    request ID answers with the policy only for the same."""
    body = asdict(policy)
    names = ("region_id", "project_id", "name", "description", "backup_schedule", "retention")
    chosen = {name: body[name] for name in names}
    chosen["server_ids"] = sorted(policy.server_ids)
    chosen["enabled"] = policy.enabled
    chosen["replication"] = body["replication"]
    return chosen
