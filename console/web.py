"""What every page handler shares: the signed-in user (or a redirect to log in), the CSRF check
of a posted form, the page's region and project, and rendering a template in the user's
language with the top bar's switchers filled in."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from console import formats, i18n
from console.gateway import CliError, Gateway, UserApi
from console.sessions import COOKIE, Session, SessionStore
from csbs.errors import CsbsError
from csbs.names import validate_request_id
from csbs.request_ids import new_request_id
from csbs.v1 import coordinator_pb2 as cpb

CSRF_FIELD = "csrf_token"
# Every form that creates something carries a request ID made when it was rendered: sent twice
# (a double click, a reload of the answer), it still creates once.
REQUEST_ID_FIELD = "request_id"
CSRF_HEADER = "x-csrf-token"
# The forms a visitor posts before signing in; every other form needs a signed-in session.
SIGNED_OUT_FORMS = ("/login", "/language")


class LoginRequired(Exception):
    """Raised by a handler whose visitor is not signed in: answered with the login page."""


@dataclass
class Console:
    """The console's state, on `app.state.console`."""

    gateway: Gateway
    sessions: SessionStore
    templates: Jinja2Templates


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def language(request: Request) -> str:
    return i18n.language_of(request.cookies.get(i18n.LANG_COOKIE))


def session_of(request: Request) -> Session | None:
    return console_of(request).sessions.get(request.cookies.get(COOKIE))


def request_id_of(request: Request) -> str:
    """This console request's ID (set by the app's middleware; every gRPC call carries it)."""
    return str(request.scope.get("csbs_request_id", ""))


@dataclass
class User:
    """The signed-in user of one request: their session and the API with their token."""

    session: Session
    api: UserApi

    @property
    def region_id(self) -> str:
        return self.session.region_id

    @property
    def project_id(self) -> str:
        """Empty: the user's main project in the region (as every call of the API takes it)."""
        return self.session.project_id


def user_of(request: Request) -> User:
    session = session_of(request)
    if session is None or not session.signed_in:
        raise LoginRequired
    gateway = console_of(request).gateway
    api = gateway.as_user(
        session.token, session.operator_token, session.catalog, request_id_of(request)
    )
    if not session.region_id:
        try:
            regions = api.regions()
        except CliError:
            regions = []
        session.region_id = regions[0].region_id if regions else ""
    return User(session, api)


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token matches the session's (from the form field or the
    header htmx sends); a wrong or missing token is 403 and nothing is done. A visitor whose
    session has ended (idle, logged out, console restarted) is sent to log in, not refused."""
    form = await request.form()
    session = session_of(request)
    if session is None or not (session.signed_in or request.url.path in SIGNED_OUT_FORMS):
        raise LoginRequired
    given = str(form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or "")
    if not session.csrf_ok(given):
        raise HTTPException(403, i18n.translate(language(request), "csrf"))
    session.catalog.clear()  # the catalog as it is now, for what the form does
    return form


FormHandler = Callable[[Request, FormData], Response]


def posted(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """A POST endpoint: the form is read and its CSRF token checked on the event loop, then the
    handler, which calls the cluster (blocking gRPC), runs in the thread pool like a GET's."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        form = await checked_form(request)
        return await run_in_threadpool(handler, request, form)

    return endpoint


def form_number(
    form: FormData, key: str, most: int = formats.UINT32_MAX, lenient: bool = False
) -> int:
    """A number field of a form: empty is 0; anything but a whole number from 0 to `most` is
    refused, naming the field (or 0 when `lenient`: to show the form again as it was)."""
    text = str(form.get(key) or "").strip()
    if not text:
        return 0
    number = formats.whole_number(text, most)
    if number is None:
        if lenient:
            return 0
        raise CliError(f"{key}: expected a whole number from 0 to {most}, got {text[:40]!r}")
    return number


def form_request_id(form: FormData) -> str:
    """The request ID the form was rendered with; a new one if it carries none, or one the
    cluster would not take as an idempotency key (1-64 of A-Z, a-z, 0-9, '_', '-')."""
    sent = str(form.get(REQUEST_ID_FIELD) or "")
    try:
        return validate_request_id(sent) or new_request_id()
    except CsbsError:
        return new_request_id()


def set_session_cookie(response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE, session.session_id, httponly=True, samesite="strict", path="/", max_age=None
    )


def redirect(request: Request, url: str) -> Response:
    """To another page: a plain redirect, or htmx's own header for a request htmx made."""
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def region_info(user: User, region_id: str | None = None) -> cpb.Region | None:
    """A region as the catalog shows it to the user (their projects there, main marked)."""
    try:
        return user.api.region_entry(region_id or user.region_id)
    except CliError:
        return None


def user_regions(user: User | None) -> list[cpb.Region]:
    """The regions for the switcher. A token the cluster no longer takes (its secrets were
    issued anew) ends the session: the user logs in again."""
    if user is None:
        return []
    try:
        return user.api.regions()
    except CliError as exc:
        if exc.status == "UNAUTHENTICATED":
            user.session.token = ""
            raise LoginRequired from None
        return []


def current_project(info: cpb.Region | None, project_id: str) -> str:
    """The project the page shows: the chosen one, else the user's main project there."""
    if project_id or info is None:
        return project_id
    return next((p.project_id for p in info.projects if p.main), "")


def render(
    request: Request,
    template: str,
    user: User | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    console = console_of(request)
    lang = language(request)
    session = user.session if user is not None else session_of(request)
    regions = user_regions(user)
    names = {r.region_id: r.display_name for r in regions}
    common: dict[str, Any] = {
        "request": request,
        "lang": lang,
        "t": lambda key: i18n.translate(lang, key),
        "csrf_token": session.csrf_token if session is not None else "",
        "user": user,
        "regions": regions,
        "region_name": lambda region_id: names.get(region_id) or region_id,
    }
    if user is not None and "info" not in context:
        info = region_info(user)
        common["info"] = info
        common["project_id"] = current_project(info, user.project_id)
    common.update(context)
    return console.templates.TemplateResponse(request, template, common, status_code=status_code)
