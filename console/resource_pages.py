"""The target side of the story: Create Image from an available backup or replica, Create
Server from the image, and a server's page, where each disk's SHA-256 is computed from the
bytes streamed from its node, so that the user sees the copy is byte-identical to the source."""

from __future__ import annotations

import hashlib

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

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
from csbs.v1 import region_node_pb2 as pb

BUSY_SERVER = (pb.SERVER_STATUS_CREATING, pb.SERVER_STATUS_RESTORING, pb.SERVER_STATUS_DELETING)


def _project(user: User) -> str:
    return current_project(region_info(user), user.project_id)


def image_dialog(request: Request) -> Response:
    user = user_of(request)
    backup_id = request.path_params["id"]
    return render(
        request,
        "_name_dialog.html",
        user,
        info=None,
        title_key="create_image",
        action=f"/backups/{backup_id}/image",
        name="",
        error="",
    )


@posted
def create_image(request: Request, form: FormData) -> Response:
    user = user_of(request)
    backup_id = request.path_params["id"]
    name = str(form.get("name") or "")
    create = pb.CreateImageRequest(
        project_id=_project(user),
        backup_id=backup_id,
        name=name,
        request_id=form_request_id(form),
    )
    try:
        image = user.api.region(user.region_id).create_image(create)
    except CliError as exc:
        return render(
            request,
            "_name_dialog.html",
            user,
            info=None,
            title_key="create_image",
            action=f"/backups/{backup_id}/image",
            name=name,
            error=exc.message,
            request_id=create.request_id,
        )
    return redirect(request, f"/images#{image.image_id}")


def images(request: Request) -> Response:
    user = user_of(request)
    info = region_info(user)
    project_id = current_project(info, user.project_id)
    error = ""
    items: list[pb.Image] = []
    try:
        items = user.api.region(user.region_id).list_images(project_id)
    except CliError as exc:
        error = exc.message
    items.sort(key=lambda i: (i.created_at.seconds, i.created_at.nanos), reverse=True)
    return render(
        request, "images.html", user, info=info, project_id=project_id, images=items, error=error
    )


def server_dialog(request: Request) -> Response:
    user = user_of(request)
    image_id = request.path_params["id"]
    return render(
        request,
        "_name_dialog.html",
        user,
        info=None,
        title_key="create_server",
        action=f"/images/{image_id}/server",
        name="",
        error="",
    )


@posted
def create_server(request: Request, form: FormData) -> Response:
    user = user_of(request)
    image_id = request.path_params["id"]
    name = str(form.get("name") or "")
    create = pb.CreateServerRequest(
        project_id=_project(user),
        name=name,
        image_id=image_id,
        request_id=form_request_id(form),
    )
    try:
        server = user.api.region(user.region_id).create_server(create)
    except CliError as exc:
        return render(
            request,
            "_name_dialog.html",
            user,
            info=None,
            title_key="create_server",
            action=f"/images/{image_id}/server",
            name=name,
            error=exc.message,
            request_id=create.request_id,
        )
    return redirect(request, f"/servers/{server.server_id}")


def servers(request: Request) -> Response:
    user = user_of(request)
    info = region_info(user)
    project_id = current_project(info, user.project_id)
    error = ""
    items: list[pb.Server] = []
    try:
        items = user.api.region(user.region_id).list_servers(project_id)
    except CliError as exc:
        error = exc.message
    items.sort(key=lambda s: (s.created_at.seconds, s.created_at.nanos), reverse=True)
    return render(
        request, "servers.html", user, info=info, project_id=project_id, servers=items, error=error
    )


def server_detail(request: Request) -> Response:
    user = user_of(request)
    info = region_info(user)
    project_id = current_project(info, user.project_id)
    try:
        server = user.api.region(user.region_id).get_server(project_id, request.path_params["id"])
    except CliError as exc:
        return render(request, "message.html", user, status_code=404, message=exc.message)
    template = "_server_status.html" if request.query_params.get("partial") else "server.html"
    return render(
        request,
        template,
        user,
        info=info,
        project_id=project_id,
        server=server,
        busy=server.status in BUSY_SERVER,
    )


@posted
def disk_sha256(request: Request, form: FormData) -> Response:
    """The SHA-256 of a whole disk, over the bytes the node streams (ReadDisk)."""
    user = user_of(request)
    read = pb.ReadDiskRequest(
        project_id=_project(user),
        server_id=request.path_params["id"],
        disk_index=int(request.path_params["disk"]),
    )
    sha = hashlib.sha256()
    try:
        for part in user.api.region(user.region_id).read_disk(read):
            sha.update(part.data)
        value, error = sha.hexdigest(), ""
    except CliError as exc:
        value, error = "", exc.message
    return render(request, "_sha256.html", user, info=None, value=value, error=error)
