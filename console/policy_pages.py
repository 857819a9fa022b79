"""Backup policies, the page's other two ways: a policy with its replication rule (M2), created
and edited in one form; Replicate now (M3) and Back up now; and each run's record (what it
backed up, replicated, skipped or failed, and why)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from console.gateway import CliError
from console.web import (
    User,
    current_project,
    form_number,
    form_request_id,
    posted,
    redirect,
    region_info,
    render,
    user_of,
)
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


def _form_context(
    user: User, policy: cpb.Policy, held: Sequence[str] | None = None
) -> dict[str, Any]:
    """What the form offers: the project's ECS servers in the policy's own region (not the one
    the switcher shows), every server the policy holds (`held`: as stored) even if no longer
    listed, and the regions that accept replication from there (R5) with the user's projects
    in each (P3), and the policy's own target even if it no longer accepts replication or does
    not answer: an unrelated edit never moves a policy's replication elsewhere. A list that
    cannot be read is said and the form cannot be sent: sent without its servers or its
    targets, it would take them out of the policy."""
    region_id = policy.region_id or user.region_id
    project_id = policy.project_id
    if not project_id:
        chosen = user.project_id if region_id == user.region_id else ""
        project_id = current_project(region_info(user, region_id), chosen)
    servers: list[pb.Server] = []
    targets: list[cpb.ReplicationTarget] = []
    refusals: list[str] = []
    try:
        servers = user.api.region(region_id).list_servers(project_id)
    except CliError as exc:
        refusals.append(exc.message)
    try:
        targets = user.api.coordinator().list_targets(region_id)
    except CliError as exc:
        refusals.append(exc.message)
    ecs = [s for s in servers if s.server_type in (0, 1)]  # unspecified reads as ECS
    listed = {s.server_id for s in ecs}
    unlisted = [pb.Server(server_id=s) for s in (held or policy.server_ids) if s not in listed]
    current = policy.replication.target_region_id if policy.replication.enabled else ""
    not_offered = ""  # the policy's target, no longer among the regions accepting replication
    if current and not any(t.region_id == current for t in targets):
        there = region_info(user, current)
        targets.append(
            cpb.ReplicationTarget(
                region_id=current,
                display_name=there.display_name if there else "",
                projects=there.projects if there else [],
            )
        )
        not_offered = current
    return {
        "policy_region": region_id,
        "policy_project": project_id,
        "servers": ecs + unlisted,
        "targets": targets,
        "current_target": current,
        "target_not_offered": not_offered,
        "load_error": "; ".join(refusals),
    }


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


def _policy_of(
    form: FormData, region_id: str, project_id: str, lenient: bool = False
) -> cpb.Policy:
    """The policy as the form gives it. `lenient`: a number that is not one reads 0 (to show
    the form again), instead of being refused naming its field."""

    def number(key: str) -> int:
        return form_number(form, key, lenient=lenient)

    policy = cpb.Policy(
        region_id=region_id,
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
        policy.retention.keep_count = number("retention_value")
    elif retention == "days":
        policy.retention.keep_days = number("retention_value")
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
                replica_keep_count=number("replica_keep_count"),
            )
        )
    return policy


def _save(form: FormData, user: User, policy_id: str) -> cpb.Policy:
    """Creates a policy (no ID: in the region and project the form showed, whatever the
    switcher shows now, once for the form's request ID however often it is sent) or changes
    one, in its own region: its fields, then its servers. Only the servers the form showed can
    be taken out: one added since, or not shown, stays."""
    coordinator = user.api.coordinator()
    if not policy_id:
        region_id, project_id = _shown_place(form, user)
        wanted = _policy_of(form, region_id, project_id)
        create = cpb.CreatePolicyRequest(policy=wanted, request_id=form_request_id(form))
        return coordinator.create_policy(create)
    old = coordinator.get_policy(policy_id)
    wanted = _policy_of(form, old.region_id, old.project_id)
    wanted.policy_id = policy_id
    shown = {str(s) for s in form.getlist("shown_server_ids")}
    # Replication absent from the form: the policy replicates no more.
    updated = coordinator.update_policy(wanted, EDITABLE)
    added = [s for s in wanted.server_ids if s not in old.server_ids]
    removed = [s for s in old.server_ids if s in shown and s not in wanted.server_ids]
    if added:
        updated = coordinator.add_policy_servers(policy_id, added)
    if removed:
        updated = coordinator.remove_policy_servers(policy_id, removed)
    return updated


def _shown_place(form: FormData, user: User) -> tuple[str, str]:
    """The region and project a new policy's form showed (one of the user's regions), else the
    switcher's."""
    region_id = str(form.get("policy_region") or "")
    if region_id not in {r.region_id for r in user.api.regions()}:
        return user.region_id, current_project(region_info(user), user.project_id)
    return region_id, str(form.get("policy_project") or "")


@posted
def save_policy(request: Request, form: FormData) -> Response:
    user = user_of(request)
    policy_id = request.path_params.get("id", "")
    try:
        saved = _save(form, user, policy_id)
    except CliError as exc:
        held: list[str] | None = None
        region_id, project_id = _shown_place(form, user)
        if policy_id:
            try:
                old = user.api.coordinator().get_policy(policy_id)
                region_id, project_id, held = old.region_id, old.project_id, list(old.server_ids)
            except CliError:
                pass
        shown = _policy_of(form, region_id, project_id, lenient=True)
        shown.policy_id = policy_id
        context = _form_context(user, shown, held)
        return render(
            request,
            "policy_form.html",
            user,
            policy=shown,
            error=exc.message,
            request_id=form_request_id(form),
            **context,
        )
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
