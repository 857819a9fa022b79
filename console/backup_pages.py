"""The Backups tab and the page's own story: a backup's row, More › Create Replication, the
dialog of Table 1 (Name checked against P1 as it is typed, Description, Target Region with only
regions that accept replication, the project selector when the region has several), OK, and the
replication job's progress, live, until it ends."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from console import formats
from console.gateway import CliError
from console.web import (
    User,
    current_project,
    form_request_id,
    posted,
    redirect,
    region_info,
    render,
    user_of,
)
from csbs.errors import CsbsError
from csbs.names import validate_name
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

PAGE_SIZE = 20
BUSY_BACKUP = (
    pb.BACKUP_STATUS_CREATING,
    pb.BACKUP_STATUS_REPLICATING,
    pb.BACKUP_STATUS_RESTORING,
)
JOB_ENDED = (cpb.REPLICATION_JOB_STATUS_SUCCESS, cpb.REPLICATION_JOB_STATUS_FAILED)
STATUS_FILTERS = ("creating", "available", "replicating", "error")


def default_replica_name(backup_id: str) -> str:
    return f"manual_rep_from_{backup_id}"


def backups(request: Request) -> Response:
    user = user_of(request)
    info = region_info(user)
    project_id = current_project(info, user.project_id)
    query = request.query_params
    name_filter = query.get("q", "").strip()
    status_filter = query.get("status", "")
    status = pb.BACKUP_STATUS_UNSPECIFIED
    if status_filter in STATUS_FILTERS:
        status = pb.BackupStatus.Value(f"BACKUP_STATUS_{status_filter.upper()}")
    error = ""
    items: list[pb.Backup] = []
    try:
        items = user.api.region(user.region_id).list_backups(project_id, status=status)
    except CliError as exc:
        error = exc.message
    if name_filter:
        items = [b for b in items if name_filter.lower() in b.name.lower()]
    items.sort(key=lambda b: (b.created_at.seconds, b.created_at.nanos), reverse=True)
    pages = max(1, -(-len(items) // PAGE_SIZE))
    page = min(max(1, formats.whole_number(query.get("page", "1")) or 1), pages)
    shown = items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    busy = any(b.status in BUSY_BACKUP for b in shown)
    keep = {"q": name_filter, "status": status_filter}
    template = "_backups_table.html" if query.get("partial") else "backups.html"
    return render(
        request,
        template,
        user,
        info=info,
        project_id=project_id,
        backups=shown,
        busy=busy,
        error=error,
        page=page,
        pages=pages,
        q=name_filter,
        status_filter=status_filter,
        status_filters=STATUS_FILTERS,
        refresh_url="/backups?" + urlencode({**keep, "page": page, "partial": 1}),
        page_url=lambda n: "/backups?" + urlencode({**keep, "page": n}),
    )


def backup_detail(request: Request) -> Response:
    user = user_of(request)
    info = region_info(user)
    project_id = current_project(info, user.project_id)
    try:
        backup = user.api.region(user.region_id).get_backup(project_id, request.path_params["id"])
    except CliError as exc:
        return render(request, "message.html", user, status_code=404, message=exc.message)
    return render(request, "backup.html", user, info=info, project_id=project_id, backup=backup)


def _targets(user: User) -> list[cpb.ReplicationTarget]:
    return user.api.coordinator().list_targets(user.region_id)


def _dialog(
    request: Request,
    user: User,
    backup_id: str,
    *,
    name: str,
    description: str = "",
    target_region: str = "",
    target_project: str = "",
    error: str = "",
    request_id: str = "",
) -> Response:
    try:
        targets = _targets(user)
    except CliError as exc:
        targets, error = [], error or exc.message
    reachable = [t for t in targets if not t.unreachable]
    chosen = next((t for t in reachable if t.region_id == target_region), None)
    if chosen is None and reachable:
        chosen = reachable[0]
    return render(
        request,
        "_replicate_dialog.html",
        user,
        info=None,
        backup_id=backup_id,
        name=name,
        description=description,
        targets=targets,
        chosen=chosen,
        target_project=target_project,
        error=error,
        request_id=request_id,
    )


def replicate_dialog(request: Request) -> Response:
    user = user_of(request)
    backup_id = request.path_params["id"]
    return _dialog(request, user, backup_id, name=default_replica_name(backup_id))


def target_projects(request: Request) -> Response:
    """The project field of the dialog for the target region just picked: a selector with the
    main project preselected when the region has several projects, else nothing to pick (P3)."""
    user = user_of(request)
    region_id = request.query_params.get("target_region", "")
    source_region = request.query_params.get("source_region") or user.region_id
    try:
        targets = user.api.coordinator().list_targets(source_region)
        chosen = next((t for t in targets if t.region_id == region_id), None)
    except CliError:
        chosen = None
    return render(
        request, "_target_projects.html", user, info=None, chosen=chosen, target_project=""
    )


def check_name(request: Request) -> Response:
    """P1, checked as the name is typed: the rule's message, or nothing."""
    name = request.query_params.get("name", "")
    try:
        if name:
            validate_name(name)
    except CsbsError:
        user = user_of(request)
        return render(request, "_name_message.html", user, info=None)
    return HTMLResponse("")


@posted
def replicate(request: Request, form: FormData) -> Response:
    user = user_of(request)
    backup_id = request.path_params["id"]
    values = {
        "name": str(form.get("name") or ""),
        "description": str(form.get("description") or ""),
        "target_region": str(form.get("target_region") or ""),
        "target_project": str(form.get("target_project") or ""),
    }
    project_id = current_project(region_info(user), user.project_id)
    wanted = cpb.ReplicateBackupRequest(
        source_region_id=user.region_id,
        source_project_id=project_id,
        backup_id=backup_id,
        target_region_id=values["target_region"],
        target_project_id=values["target_project"],
        name=values["name"],
        description=values["description"],
        idempotency_token=form_request_id(form),
    )
    try:
        job = user.api.coordinator().replicate(wanted)
    except CliError as exc:
        # Shown again with the same request ID: sent again, a replication the cluster made
        # although its answer was lost (a deadline) is answered, not made twice.
        request_id = wanted.idempotency_token
        return _dialog(request, user, backup_id, error=exc.message, request_id=request_id, **values)
    return redirect(request, f"/jobs/{job.job_id}")


def jobs(request: Request) -> Response:
    user = user_of(request)
    error = ""
    items: list[cpb.ReplicationJob] = []
    try:
        items = user.api.coordinator().list_jobs(cpb.ListReplicationJobsRequest())
    except CliError as exc:
        error = exc.message
    items.sort(key=lambda j: (j.created_at.seconds, j.created_at.nanos), reverse=True)
    busy = any(j.status not in JOB_ENDED for j in items)
    template = "_jobs_table.html" if request.query_params.get("partial") else "jobs.html"
    return render(request, template, user, jobs=items[:100], busy=busy, error=error)


def job_detail(request: Request) -> Response:
    user = user_of(request)
    try:
        job = user.api.coordinator().get_job(request.path_params["id"])
    except CliError as exc:
        return render(request, "message.html", user, status_code=404, message=exc.message)
    template = "_job_progress.html" if request.query_params.get("partial") else "job.html"
    return render(request, template, user, job=job, ended=job.status in JOB_ENDED)
