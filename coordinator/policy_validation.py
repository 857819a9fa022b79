"""A policy's definition checked against the service's rules, in one place: name and
description (P1), the projects (P3), the schedules, retention, the replication rule (R5 and
the target), the servers it protects (how many, R1a) and which fields an update may change.
Each check raises the domain error naming the field or the rule; the checks that need to know
a region ask its node (region_info, server_type) and nothing else. Whether a server is already
in another policy is checked where servers are added, atomically (PolicyStore.add_servers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from coordinator.policy_models import MAX_KEEP, Policy, PolicyReplication
from coordinator.replication_rules import own_project
from coordinator.schedule import validate_schedule
from csbs.clients import RegionNodes
from csbs.errors import (
    InvalidArgument,
    PolicyProtectsCloudServersOnly,
    RegionNotFound,
    RegionRefusesReplication,
    TargetProjectNotFound,
)
from csbs.names import validate_description, validate_name
from csbs.node_views import ServerType

MAX_SERVERS = 64
UPDATABLE_FIELDS = frozenset(
    {"name", "description", "backup_schedule", "retention", "enabled", "replication"}
)


def check_definition(nodes: RegionNodes, policy: Policy, check_capability: bool = True) -> Policy:
    """Checks every field against its rule; returns the policy with defaults filled in.
    `check_capability` False leaves R5 (whether the target accepts replication now) out."""
    validate_name(policy.name, "name")
    validate_description(policy.description, "description")
    if policy.region_id not in nodes:
        raise RegionNotFound(policy.region_id)
    info = nodes.client(policy.region_id).region_info()  # every project
    project = own_project(
        info, policy.region_id, policy.account_id, policy.project_id, "project_id"
    )
    schedule = validate_schedule(
        policy.backup_schedule.rrule, policy.backup_schedule.timezone, "backup_schedule"
    )
    r = policy.retention
    if r.keep_count and r.keep_days:
        raise InvalidArgument("retention: keep_count or keep_days, not both")
    for name, value in (("keep_count", r.keep_count), ("keep_days", r.keep_days)):
        if not 0 <= value <= MAX_KEEP:
            raise InvalidArgument(f"retention.{name} {value}: 1 to {MAX_KEEP}")
    policy = replace(policy, project_id=project.project_id, backup_schedule=schedule)
    if policy.replication is not None:
        policy = replace(policy, replication=_check_replication(nodes, policy, check_capability))
    return policy


def _check_replication(
    nodes: RegionNodes, policy: Policy, check_capability: bool
) -> PolicyReplication:
    repl = policy.replication
    assert repl is not None
    target = repl.target_region_id
    if not target:
        raise InvalidArgument("replication.target_region_id is required")
    if target not in nodes:
        raise RegionNotFound(target)
    if target == policy.region_id:
        raise InvalidArgument(
            "replication.target_region_id: the target must be another region than the "
            f"policy's region {policy.region_id}"
        )
    info = nodes.client(target).region_info()  # every project of the region
    if check_capability and not info.accepts_replication:
        raise RegionRefusesReplication(target)
    project = own_project(
        info,
        target,
        policy.account_id,
        repl.target_project_id,
        "replication.target_project_id",
        TargetProjectNotFound,
    )
    if not 0 <= repl.replica_keep_count <= MAX_KEEP:
        raise InvalidArgument(f"replication.replica_keep_count: 0 to {MAX_KEEP}")
    schedule = validate_schedule(
        repl.schedule.rrule, repl.schedule.timezone, "replication.schedule"
    )
    return replace(repl, target_project_id=project.project_id, schedule=schedule)


def check_server_count(server_ids: Sequence[str]) -> None:
    if len(server_ids) > MAX_SERVERS:
        raise InvalidArgument(f"server_ids: at most {MAX_SERVERS} servers in a policy")


def check_servers(nodes: RegionNodes, policy: Policy, server_ids: Sequence[str]) -> None:
    """The servers a policy is asked to protect: at most MAX_SERVERS, none named twice, each
    an elastic cloud server of the policy's project (R1a)."""
    check_server_count(server_ids)
    if len(set(server_ids)) != len(server_ids):
        raise InvalidArgument("server_ids: a server is named twice")
    client = nodes.client(policy.region_id, policy.account_id)
    for server_id in server_ids:
        kind = client.server_type(policy.project_id, server_id)
        if kind != ServerType.ECS:
            raise PolicyProtectsCloudServersOnly(server_id)


def check_update_fields(fields: Sequence[str]) -> list[str]:
    """The fields an update changes: those named, or every one that may change if none is."""
    unknown = sorted(set(fields) - UPDATABLE_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"update_fields: {', '.join(unknown)} cannot be changed; one of "
            f"{', '.join(sorted(UPDATABLE_FIELDS))}"
        )
    return list(fields or sorted(UPDATABLE_FIELDS))
