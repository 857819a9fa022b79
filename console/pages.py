"""The pages around the product's own: logging in and out, the region and project switcher, the
language switch, and the health check the cluster runner waits on."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from console import i18n
from console.gateway import CliError
from console.web import (
    console_of,
    language,
    posted,
    redirect,
    region_info,
    render,
    session_of,
    set_session_cookie,
    user_of,
)


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def home(request: Request) -> Response:
    return RedirectResponse("/backups", status_code=303)


def login_page(request: Request) -> Response:
    session = session_of(request)
    if session is None:
        session = console_of(request).sessions.new()
    response = render(request, "login.html", csrf_token=session.csrf_token)
    set_session_cookie(response, session)
    return response


@posted
def login(request: Request, form: FormData) -> Response:
    session = session_of(request)
    assert session is not None  # the CSRF check found it
    token = str(form.get("token") or "").strip()
    operator_token = str(form.get("operator_token") or "").strip()
    console = console_of(request)
    try:
        # The token is good if the cluster answers the user's own call with it; the operator
        # credential if it answers an operator call.
        api = console.gateway.as_user(token, operator_token)
        api.regions()
        if operator_token:
            api.coordinator().list_links()
    except CliError as exc:
        refused = i18n.translate(language(request), "login.refused")
        denied = exc.status in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        return render(
            request, "login.html", status_code=401, error=refused if denied else exc.message
        )
    signed_in = console.sessions.sign_in(session, token, operator_token)
    response = RedirectResponse("/backups", status_code=303)
    set_session_cookie(response, signed_in)
    return response


@posted
def logout(request: Request, form: FormData) -> Response:
    session = session_of(request)
    assert session is not None
    console_of(request).sessions.drop(session.session_id)
    return RedirectResponse("/login", status_code=303)


@posted
def switch_context(request: Request, form: FormData) -> Response:
    """The region and project switcher: the page then shows that region's, that project's."""
    user = user_of(request)
    region_id = str(form.get("region") or "")
    if region_id in {r.region_id for r in user.api.regions()}:
        if region_id != user.session.region_id:
            user.session.project_id = ""
        user.session.region_id = region_id
    project_id = str(form.get("project") or "")
    info = region_info(user)
    if info is not None and project_id in {p.project_id for p in info.projects}:
        user.session.project_id = project_id
    return redirect(request, _local(str(form.get("next") or "/backups")))


def project_choices(request: Request) -> Response:
    """The switcher's project list for the region just picked (htmx swaps it in)."""
    user = user_of(request)
    info = region_info(user, request.query_params.get("region") or None)
    return render(request, "_project_select.html", user, info=info, project_id="")


@posted
def switch_language(request: Request, form: FormData) -> Response:
    lang = i18n.language_of(str(form.get("lang") or ""))
    response = redirect(request, _local(str(form.get("next") or "/backups")))
    response.set_cookie(i18n.LANG_COOKIE, lang, samesite="strict", max_age=365 * 24 * 3600)
    return response


def _local(url: str) -> str:
    """Only a path of this console (its query kept): never a redirect elsewhere. Browsers read a
    backslash as a slash, so "/\\evil.example" is another site's address too."""
    local = url.startswith("/") and not url.startswith("//")
    if not local or "\\" in url or any(ord(c) < 0x20 for c in url):
        return "/backups"
    return url
