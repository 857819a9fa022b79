"""The console's web app: its routes, templates and static files (htmx, the style sheet), and
what an unsigned visitor or a refused form gets. Handlers are in pages, backup_pages and
resource_pages; a plain `def` handler runs in Starlette's thread pool (its gRPC calls block)."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from console import (
    backup_pages,
    formats,
    operator_pages,
    pages,
    policy_pages,
    resource_pages,
    rpo_pages,
)
from console.config import ConsoleConfig
from console.gateway import Gateway
from console.sessions import SessionStore
from console.web import Console, LoginRequired
from csbs.bandwidth import format_bandwidth
from csbs.request_ids import REQUEST_ID_METADATA, accepted, new_request_id
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

HERE = Path(__file__).resolve().parent


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters["size"] = formats.size
    env.filters["when"] = formats.when
    env.filters["bandwidth"] = format_bandwidth
    env.globals["percent"] = formats.percent
    env.globals["backup_state"] = lambda v: formats.state(pb.BackupStatus, v)
    env.globals["job_state"] = lambda v: formats.state(cpb.ReplicationJobStatus, v)
    env.globals["server_state"] = lambda v: formats.state(pb.ServerStatus, v)
    env.globals["record_state"] = lambda v: formats.state(pb.ReplicationRecordStatus, v)
    env.globals["way"] = lambda v: formats.state(common_pb2.ReplicationWay, v)
    env.globals["run_kind"] = lambda v: formats.state(cpb.PolicyRunKind, v)
    env.globals["run_trigger"] = lambda v: formats.state(cpb.PolicyRunTrigger, v)
    env.globals["run_state"] = lambda v: formats.state(cpb.PolicyRunStatus, v)
    env.globals["new_request_id"] = new_request_id  # one per rendered form (web.REQUEST_ID_FIELD)
    env.globals["pb"] = pb
    env.globals["cpb"] = cpb
    return templates


ROUTES = [
    Route("/healthz", pages.healthz),
    Route("/", pages.home),
    Route("/login", pages.login_page, methods=["GET"]),
    Route("/login", pages.login, methods=["POST"]),
    Route("/logout", pages.logout, methods=["POST"]),
    Route("/context", pages.switch_context, methods=["POST"]),
    Route("/context/projects", pages.project_choices),
    Route("/language", pages.switch_language, methods=["POST"]),
    Route("/backups", backup_pages.backups),
    Route("/backups/{id}", backup_pages.backup_detail),
    Route("/backups/{id}/replicate", backup_pages.replicate_dialog, methods=["GET"]),
    Route("/backups/{id}/replicate", backup_pages.replicate, methods=["POST"]),
    Route("/replicate/projects", backup_pages.target_projects),
    Route("/replicate/check-name", backup_pages.check_name),
    Route("/jobs", backup_pages.jobs),
    Route("/jobs/{id}", backup_pages.job_detail),
    Route("/backups/{id}/image", resource_pages.image_dialog, methods=["GET"]),
    Route("/backups/{id}/image", resource_pages.create_image, methods=["POST"]),
    Route("/images", resource_pages.images),
    Route("/images/{id}/server", resource_pages.server_dialog, methods=["GET"]),
    Route("/images/{id}/server", resource_pages.create_server, methods=["POST"]),
    Route("/servers", resource_pages.servers),
    Route("/servers/{id}", resource_pages.server_detail),
    Route("/servers/{id}/disks/{disk:int}/sha256", resource_pages.disk_sha256, methods=["POST"]),
    Route("/policies", policy_pages.policies, methods=["GET"]),
    Route("/policies", policy_pages.save_policy, methods=["POST"]),
    Route("/policies/new", policy_pages.new_policy),
    Route("/policies/{id}", policy_pages.policy_detail, methods=["GET"]),
    Route("/policies/{id}", policy_pages.save_policy, methods=["POST"]),
    Route("/policies/{id}/edit", policy_pages.edit_policy),
    Route("/policies/{id}/execute", policy_pages.execute_policy, methods=["POST"]),
    Route("/recovery-points", rpo_pages.recovery_points),
    Route("/operator", operator_pages.operator_page, methods=["GET"]),
    Route("/operator", operator_pages.operator_action, methods=["POST"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


async def _login_required(request: Request, exc: Exception) -> Response:
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": "/login"})
    return RedirectResponse("/login", status_code=303)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = html.escape(str(exc.detail))
    return HTMLResponse(f"<p class='refused'>{detail}</p>", status_code=exc.status_code)


# Never framed by another site (clickjacking), no sniffing, no full URLs sent elsewhere.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def _every_answer(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """Every request gets an ID (the one the client sent, if acceptable), carried on every
    gRPC call made for it and answered as X-Request-ID; every answer the security headers."""
    request_id = accepted(request.headers.get(REQUEST_ID_METADATA))
    request.scope["csbs_request_id"] = request_id
    response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    response.headers["X-Request-ID"] = request_id
    return response


def build_app(config: ConsoleConfig) -> Starlette:
    console = Console(Gateway(config), SessionStore(), _templates())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        console.gateway.close()  # the channels to the cluster, when the console stops

    app = Starlette(
        routes=ROUTES,
        exception_handlers={LoginRequired: _login_required, HTTPException: _http_error},
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=_every_answer)],
        lifespan=lifespan,
    )
    app.state.console = console
    return app
