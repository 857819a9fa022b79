"""Backup policies, the page's other two ways: a policy with its replication rule (M2), created
and edited in one form; Replicate now (M3) and Back up now; and each run's record (what it
backed up, replicated, skipped or failed, and why)."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from console.gateway import CliError
from console.web import User, current_project, posted, redirect, region_info, render, user_of
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

DEFAULT_BACKUP_RRULE = "FREQ=DAILY;BYHOUR=2;BYMINUTE=0"
DEFAULT_REPLICATION_RRULE = "FREQ=DAILY;BYHOUR=4;BYMINUTE=0"
EDITABLE = ("name", "description", "backup_schedule", "retention", "enabled", "replication")
RUN_KINDS = {"backup": cpb.POLICY_RUN_KIND_BACKUP, "replication": cpb.POLICY_RUN_KIND_REPLICATION}


def policies(request: Request) -> Response:
    user = user_of(request)
    info = region_info(user)
    project_id = current_project(info, user.project_id)
    error = ""
    items: list[cpb.Policy] = []
    try:
        items = user.api.coordinator().list_policies(user.region_id, project_id)
    except CliError as exc:
        error = exc.message
    context: dict[str, Any] = {"info": info, "project_id": project_id, "error": error}
    return render(request, "policies.html", user, policies=items, **context)


def policy_detail(request: Request) -> Response:
    user = user_of(request)
    coordinator = user.api.coordinator()
    try:
        policy = coordinator.get_policy(request.path_params["id"])
        runs = coordinator.list_policy_runs(policy.policy_id)
    except CliError as exc:
        return render(request, "message.html", user, status_code=404, message=exc.message)
    runs.sort(key=lambda r: (r.started_at.seconds, r.started_at.nanos), reverse=True)
    busy = any(r.status == cpb.POLICY_RUN_STATUS_RUNNING for r in runs)
    template = "_policy_runs.html" if request.query_params.get("partial") else "policy.html"
    return render(request, template, user, policy=policy, runs=runs[:50], busy=busy)


def _form_context(user: User, policy: cpb.Policy) -> dict[str, Any]:
    """What the form offers: the project's ECS servers, and the regions that accept
    replication (R5) with the user's projects there (P3)."""
    info = region_info(user)
    project_id = policy.project_id or current_project(info, user.project_id)
    servers: list[pb.Server] = []
    targets: list[cpb.ReplicationTarget] = []
    try:
        servers = user.api.region(user.region_id).list_servers(project_id)
        targets = user.api.coordinator().list_targets(user.region_id)
    except CliError:
        pass
    ecs = [s for s in servers if s.server_type in (0, 1)]  # unspecified reads as ECS
    return {"info": info, "project_id": project_id, "servers": ecs, "targets": targets}


def new_policy(request: Request) -> Response:
    user = user_of(request)
    policy = cpb.Policy(
        backup_schedule=cpb.Schedule(rrule=DEFAULT_BACKUP_RRULE),
        enabled=True,
        replication=cpb.PolicyReplication(schedule=cpb.Schedule(rrule=DEFAULT_REPLICATION_RRULE)),
    )
    context = _form_context(user, policy)
    return render(request, "policy_form.html", user, policy=policy, error="", **context)


def edit_policy(request: Request) -> Response:
    user = user_of(request)
    try:
        policy = user.api.coordinator().get_policy(request.path_params["id"])
    except CliError as exc:
        return render(request, "message.html", user, status_code=404, message=exc.message)
    context = _form_context(user, policy)
    return render(request, "policy_form.html", user, policy=policy, error="", **context)


def _number(form: FormData, key: str) -> int:
    text = str(form.get(key) or "").strip()
    return int(text) if text.isdigit() else 0


def _policy_of(form: FormData, user: User, project_id: str) -> cpb.Policy:
    policy = cpb.Policy(
        region_id=user.region_id,
        project_id=project_id,
        name=str(form.get("name") or ""),
        description=str(form.get("description") or ""),
        server_ids=[str(s) for s in form.getlist("server_ids")],
        backup_schedule=cpb.Schedule(
            rrule=str(form.get("backup_rrule") or ""),
            timezone=str(form.get("backup_timezone") or ""),
        ),
        enabled=form.get("enabled") == "on",
    )
    retention = str(form.get("retention") or "")
    if retention == "count":
        policy.retention.keep_count = _number(form, "retention_value")
    elif retention == "days":
        policy.retention.keep_days = _number(form, "retention_value")
    else:
        policy.retention.SetInParent()  # keep forever
    if form.get("replication_enabled") == "on":
        policy.replication.CopyFrom(
            cpb.PolicyReplication(
                enabled=True,
                target_region_id=str(form.get("target_region") or ""),
                target_project_id=str(form.get("target_project") or ""),
                schedule=cpb.Schedule(
                    rrule=str(form.get("replication_rrule") or ""),
                    timezone=str(form.get("backup_timezone") or ""),
                ),
                replica_keep_count=_number(form, "replica_keep_count"),
            )
        )
    return policy


def _save(form: FormData, user: User, policy_id: str) -> cpb.Policy:
    """Creates a policy (no ID) or changes one: its fields, then its servers."""
    coordinator = user.api.coordinator()
    if not policy_id:
        project_id = current_project(region_info(user), user.project_id)
        wanted = _policy_of(form, user, project_id)
        create = cpb.CreatePolicyRequest(policy=wanted, request_id=secrets.token_urlsafe(24))
        return coordinator.create_policy(create)
    old = coordinator.get_policy(policy_id)
    wanted = _policy_of(form, user, old.project_id)
    wanted.policy_id = policy_id
    # Replication absent from the form: the policy replicates no more.
    updated = coordinator.update_policy(wanted, EDITABLE)
    added = [s for s in wanted.server_ids if s not in old.server_ids]
    removed = [s for s in old.server_ids if s not in wanted.server_ids]
    if added:
        updated = coordinator.add_policy_servers(policy_id, added)
    if removed:
        updated = coordinator.remove_policy_servers(policy_id, removed)
    return updated


@posted
def save_policy(request: Request, form: FormData) -> Response:
    user = user_of(request)
    policy_id = request.path_params.get("id", "")
    try:
        saved = _save(form, user, policy_id)
    except CliError as exc:
        project_id = current_project(region_info(user), user.project_id)
        shown = _policy_of(form, user, project_id)
        shown.policy_id = policy_id
        context = _form_context(user, shown)
        return render(request, "policy_form.html", user, policy=shown, error=exc.message, **context)
    return redirect(request, f"/policies/{saved.policy_id}")


@posted
def execute_policy(request: Request, form: FormData) -> Response:
    """Back up now, or Replicate now (M3): the run starts at once; its record shows on the
    policy's page."""
    user = user_of(request)
    policy_id = request.path_params["id"]
    kind = RUN_KINDS.get(str(form.get("kind") or ""), cpb.POLICY_RUN_KIND_BACKUP)
    try:
        user.api.coordinator().execute_policy(policy_id, kind)
    except CliError as exc:
        return render(request, "message.html", user, status_code=409, message=exc.message)
    return redirect(request, f"/policies/{policy_id}")
