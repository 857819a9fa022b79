"""The console's forms under what real users do to them (issue 15's review): a policy edited
while the switcher shows another region, or while its servers cannot be listed, keeps its
servers and its target; a form sent after the session ended goes to the login page; a refused
htmx form says why; every POST route refuses a form without its CSRF token; a form sent twice
creates once; a page asks a coordinator that refuses once, and carries its request ID to the
coordinator's log; odd numbers in a query or a form get a page, not an error. A real browser
and real processes, as in test_console."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.support.ui import Select
from starlette.routing import Route

from console.app import ROUTES
from console.gateway import CATALOG_SECONDS
from console.sessions import COOKIE
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub
from tests.console_world import SOURCE, TARGET, TARGET_DR, World, open_dialog, world_in
from tests.harness import DEFAULT_ACCOUNT, OPERATOR_TOKEN

pytestmark = pytest.mark.timeout(240)

CSRF_REFUSED = "Refused: the form has expired, reload."
DAILY_2 = "FREQ=DAILY;BYHOUR=2;BYMINUTE=0"
DAILY_4 = "FREQ=DAILY;BYHOUR=4;BYMINUTE=0"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_in(tmp_path_factory.mktemp("console-forms"))


def _form_fields(world: World, form_id: str) -> list[list[str]]:
    fields: list[list[str]] = world.page.driver.execute_script(
        "return Array.from(new FormData(document.getElementById(arguments[0])).entries());",
        form_id,
    )
    return fields


def _send(world: World, path: str, fields: list[list[str]], times: int = 1) -> list[Any]:
    """Posts the fields from the console's own page (its cookies go along) as htmx does,
    `times` at once; each answer's [status, HX-Redirect, body]."""
    answers: list[Any] = world.page.driver.execute_async_script(
        """const [path, fields, times] = arguments;
        const done = arguments[arguments.length - 1];
        const send = () => fetch(path, {method: 'POST', headers: {'HX-Request': 'true'},
            body: new URLSearchParams(fields)})
          .then(r => r.text().then(t => [r.status, r.headers.get('HX-Redirect'), t]));
        Promise.all(Array.from({length: times}, send)).then(done, e => done(String(e)));""",
        path,
        fields,
        times,
    )
    return answers


def _post(world: World, path: str, fields: dict[str, str], cookie: str) -> tuple[int, str]:
    """A plain HTTP POST (redirects not followed): its status and Location."""
    address = urllib.parse.urlsplit(world.console.url)
    connection = http.client.HTTPConnection(str(address.hostname), address.port, timeout=10)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if cookie:
            headers["Cookie"] = cookie
        connection.request("POST", path, body=urllib.parse.urlencode(fields), headers=headers)
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.getheader("Location") or ""
    finally:
        connection.close()


def _cookie(world: World) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in world.page.driver.get_cookies())


def _jobs_of(world: World, backup_id: str) -> list[cpb.ReplicationJob]:
    answer = CoordinatorStub(world.cluster.coordinator_channel()).ListReplicationJobs(
        cpb.ListReplicationJobsRequest(source_backup_id=backup_id), timeout=10
    )
    return list(answer.jobs)


def _policy(world: World, server_id: str) -> cpb.Policy:
    policy = cpb.Policy(
        region_id=SOURCE,
        name=f"kept_{server_id[:8]}",
        enabled=True,
        server_ids=[server_id],
        backup_schedule=cpb.Schedule(rrule=DAILY_2),
        retention=cpb.RetentionRule(keep_count=3),
        replication=cpb.PolicyReplication(
            enabled=True,
            target_region_id=TARGET,
            target_project_id=TARGET_DR,
            schedule=cpb.Schedule(rrule=DAILY_4),
        ),
    )
    created: cpb.Policy = CoordinatorStub(world.cluster.coordinator_channel()).CreatePolicy(
        cpb.CreatePolicyRequest(policy=policy), timeout=10
    )
    return created


def _get_policy(world: World, policy_id: str) -> cpb.Policy:
    got: cpb.Policy = CoordinatorStub(world.cluster.coordinator_channel()).GetPolicy(
        cpb.GetPolicyRequest(policy_id=policy_id), timeout=10
    )
    return got


def test_a_policy_edited_while_another_region_is_shown_keeps_its_servers_and_target(
    world: World,
) -> None:
    source = world.source(21)
    policy = _policy(world, source.server_id)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    # The switcher shows the target region; the policy lives in the source region.
    Select(page.find("#region-select")).select_by_value(TARGET)
    page.find("#switch").click()
    page.until(
        lambda: (
            Select(page.find("#region-select")).first_selected_option.get_attribute("value")
            == TARGET
        ),
        why="the target region shown",
    )
    page.open(f"/policies/{policy.policy_id}/edit")
    assert "CN North-Beijing4" in page.find("#policy-place").text
    assert page.find(f"input[name='server_ids'][value='{source.server_id}']").is_selected()
    assert Select(page.find("#target-region")).first_selected_option.get_attribute("value") == (
        TARGET
    )
    project = Select(page.find("#target-project")).first_selected_option
    assert project.get_attribute("value") == TARGET_DR
    page.find("#policy-ok").click()
    page.until(lambda: page.path == f"/policies/{policy.policy_id}", why="the policy saved")
    saved = _get_policy(world, policy.policy_id)
    assert list(saved.server_ids) == [source.server_id]
    assert saved.replication.enabled and saved.replication.target_region_id == TARGET
    assert saved.replication.target_project_id == TARGET_DR

    # The source node cannot list servers: the form says so and cannot be sent; sent anyway
    # without the server (a forged or stale form), the server stays in the policy.
    faults = FaultInjectionStub(world.cluster.channel(SOURCE))
    rule = fpb.FaultRule(
        method="*/ListServers", code="FAILED_PRECONDITION", message="lists on fire"
    )
    faults.AddFaultRule(rule, timeout=10)
    try:
        page.open(f"/policies/{policy.policy_id}/edit")
        assert "lists on fire" in page.find("#policy-load-error").text
        assert not page.find("#policy-ok").is_enabled()
        # The server the policy holds is still shown, by its ID, and checked.
        assert page.find(f"input[name='server_ids'][value='{source.server_id}']").is_selected()
        fields = [
            f
            for f in _form_fields(world, "policy-form")
            if f[0] not in ("server_ids", "shown_server_ids")
        ]
        [(status, location, text)] = _send(world, f"/policies/{policy.policy_id}", fields)
        assert (status, location) == (200, f"/policies/{policy.policy_id}"), text
    finally:
        faults.ClearFaultRules(fpb.ClearFaultRulesRequest(), timeout=10)
    assert list(_get_policy(world, policy.policy_id).server_ids) == [source.server_id]

    # The target stops accepting replication (R5): the form still shows it, chosen, and an
    # unrelated edit never moves the policy's replication to another region.
    _set_capability(world, TARGET, False)
    try:
        page.open(f"/policies/{policy.policy_id}/edit")
        chosen = Select(page.find("#target-region")).first_selected_option
        assert chosen.get_attribute("value") == TARGET
        assert "no longer accepts replication" in chosen.text
        page.find("#policy-description").send_keys("edited")
        page.find("#policy-ok").click()
        page.until(
            lambda: page.path == f"/policies/{policy.policy_id}" or page.all("#policy-error"),
            why="saved or refused",
        )
    finally:
        _set_capability(world, TARGET, True)
    assert _get_policy(world, policy.policy_id).replication.target_region_id == TARGET
    # A server the form showed, unchecked, is taken out.
    page.open(f"/policies/{policy.policy_id}/edit")
    page.find(f"input[name='server_ids'][value='{source.server_id}']").click()
    page.find("#policy-ok").click()
    page.until(lambda: page.path == f"/policies/{policy.policy_id}", why="the policy saved")
    assert list(_get_policy(world, policy.policy_id).server_ids) == []


def _set_capability(world: World, region_id: str, accepts: bool) -> None:
    admin = RegionNodeAdminStub(world.cluster.channel(region_id))
    request = pb.SetReplicationCapabilityRequest(accepts_replication=accepts)
    admin.SetReplicationCapability(request, timeout=10)


def test_a_form_sent_after_the_session_ended_goes_to_the_login_page(world: World) -> None:
    source = world.source(22)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    open_dialog(page, source.backup_id)
    # P2, counted as it is typed.
    page.find("#replica-description").send_keys("twelve chars")
    assert page.find("#description-count").text == "12"
    page.driver.delete_cookie(COOKIE)  # idle too long, logged out elsewhere, console restarted
    page.find("#replicate-ok").click()
    page.until(lambda: page.path == "/login", why="the login page")
    assert _jobs_of(world, source.backup_id) == []


def test_a_refused_htmx_form_shows_why(world: World) -> None:
    source = world.source(23)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    open_dialog(page, source.backup_id)
    # The page's CSRF token is no longer the session's (another tab logged in again).
    page.driver.execute_script(
        """document.body.setAttribute('hx-headers', JSON.stringify({'X-CSRF-Token': 'stale'}));
        document.querySelector('#replicate-form input[name=csrf_token]').value = 'stale';"""
    )
    page.find("#replicate-ok").click()
    page.until(lambda: page.find("#flash").text == CSRF_REFUSED, why="the refusal shown")
    assert _jobs_of(world, source.backup_id) == []


def _post_paths() -> list[str]:
    paths = []
    for route in ROUTES:
        if isinstance(route, Route) and "POST" in (route.methods or set()):
            paths.append(route.path.replace("{id}", "x").replace("{disk:int}", "0"))
    return paths


def test_every_form_refuses_a_post_without_its_csrf_token(world: World) -> None:
    paths = _post_paths()
    assert len(paths) >= 12 and "/backups/x/replicate" in paths and "/operator" in paths
    world.log_in(DEFAULT_ACCOUNT, "en", OPERATOR_TOKEN)
    cookie = _cookie(world)
    answers = {
        path: (
            _post(world, path, {"name": "x"}, cookie)[0],
            _post(world, path, {"name": "x", "csrf_token": "not-the-sessions"}, cookie)[0],
            _post(world, path, {"name": "x"}, "")[0:2],
            _post(world, path, {"name": "x"}, f"{COOKIE}=ended")[0:2],
        )
        for path in paths
    }
    refused = (403, 403, (303, "/login"), (303, "/login"))
    assert {p: a for p, a in answers.items() if a != refused} == {}
    # A redirect in the open is never followed off the console (a backslash reads as a slash).
    token = world.page.find("input[name=csrf_token]").get_attribute("value") or ""
    for next_url in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        fields = {"csrf_token": token, "lang": "en", "next": next_url}
        assert _post(world, "/language", fields, cookie) == (303, "/backups")


def test_a_form_sent_twice_creates_once(world: World) -> None:
    source = world.source(24)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    open_dialog(page, source.backup_id)
    fields = _form_fields(world, "replicate-form")
    answers = _send(world, f"/backups/{source.backup_id}/replicate", fields, times=2)
    [job] = _jobs_of(world, source.backup_id)
    assert [a[:2] for a in answers] == [[200, f"/jobs/{job.job_id}"]] * 2
    # The policy form, sent twice: one policy.
    page.open("/policies/new")
    page.find("#policy-name").send_keys(f"once_{source.server_id[:8]}")
    fields = _form_fields(world, "policy-form")
    answers = _send(world, "/policies", fields, times=2)
    policies = CoordinatorStub(world.cluster.coordinator_channel()).ListPolicies(
        cpb.ListPoliciesRequest(region_id=SOURCE), timeout=10
    )
    named = [p for p in policies.policies if p.name == f"once_{source.server_id[:8]}"]
    assert len(named) == 1, named
    assert [a[:2] for a in answers] == [[200, f"/policies/{named[0].policy_id}"]] * 2, [
        re.findall('id="policy-error">([^<]*)', a[2]) for a in answers
    ]


def _log_lines(world: World) -> list[dict[str, Any]]:
    lines = world.cluster.coordinator.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_page_asks_a_refusing_coordinator_once_and_carries_its_request_id(
    world: World,
) -> None:
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    time.sleep(CATALOG_SECONDS + 0.5)  # the session's catalog forgotten: the page asks anew
    faults = FaultInjectionStub(world.cluster.coordinator_channel())
    rule = fpb.FaultRule(
        method="*/ListRegions", code="FAILED_PRECONDITION", message="catalog on fire"
    )
    added = faults.AddFaultRule(rule, timeout=10)
    try:
        status, request_id, text = page.driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch('/servers', {headers: {'x-request-id': 'console-test-once'}})
              .then(r => r.text().then(t => done([r.status, r.headers.get('X-Request-ID'), t])));"""
        )
        [held] = [
            r
            for r in faults.ListFaultRules(fpb.ListFaultRulesRequest(), timeout=10).rules
            if r.rule_id == added.rule_id
        ]
    finally:
        faults.ClearFaultRules(fpb.ClearFaultRulesRequest(), timeout=10)
    assert status == 200 and "catalog on fire" in text
    assert request_id == "console-test-once"
    assert held.calls_matched == 1  # every part of the page took the one answer
    refused = [
        e
        for e in _log_lines(world)
        if e.get("request_id") == "console-test-once" and "ListRegions" in str(e.get("message"))
    ]
    assert refused, "the coordinator logged no call with the console request's ID"


def test_odd_numbers_in_a_query_or_a_form_get_a_page_not_an_error(world: World) -> None:
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en", OPERATOR_TOKEN)
    for odd in ("²", "9" * 5000, "-1"):
        page.open("/backups?" + urllib.parse.urlencode({"page": odd}))
        assert page.find("#backups")
    # The language switch returns to the page with its query.
    page.open("/backups?q=nothing-like-this")
    page.find("#lang-zh").click()
    page.until(lambda: page.find("html").get_attribute("lang") == "zh-CN", why="Chinese")
    assert page.driver.current_url.endswith("/backups?q=nothing-like-this")
    page.find("#lang-en").click()
    page.until(lambda: page.find("html").get_attribute("lang") == "en", why="English")
    page.open("/operator")
    token = page.find("#link-form input[name=csrf_token]").get_attribute("value") or ""
    fields = [
        ["csrf_token", token],
        ["action", "link"],
        ["source", SOURCE],
        ["target", TARGET],
        ["latency_ms", "²"],
    ]
    [(status, _, text)] = _send(world, "/operator", fields)
    assert status == 409 and "latency_ms: expected a whole number" in text
