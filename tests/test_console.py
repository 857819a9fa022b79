"""The console (issue 15) in a real browser against a real cluster: the product page's steps end
to end in Chinese and in English (log in, the backup in the Backups tab, More › Create
Replication, the dialog of Table 1 with its default name, capable regions only and the main
project preselected, the P1 message as the name is typed and the server's refusal on OK, the
job's live progress to success, the target region and project, the replica, Create Image,
Create Server, and each disk's SHA-256 equal to the source's); a second account that never sees
the first one's resources; and forms posted without their CSRF token refused. One cluster, one
console and one browser for the module; a screenshot of every step under the module's tmp dir."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select

from console.backup_pages import PAGE_SIZE
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub
from tests.browser import Page
from tests.console_world import (
    DIALOG_WORDS,
    DISKS_MIB,
    P1_MESSAGE,
    SOURCE,
    TARGET,
    TARGET_DR,
    TARGET_MAIN,
    World,
    open_dialog,
    world_in,
)
from tests.harness import (
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
    DEFAULT_REGIONS,
    OPERATOR_TOKEN,
    REPO_ROOT,
    SECOND_ACCOUNT,
    Cluster,
    write_cluster_config,
)
from tests.node_helpers import backup, node
from tests.replication_helpers import replicated

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_in(tmp_path_factory.mktemp("console"))


def _step(page: Page, lang: str, number: int, name: str) -> None:
    page.shot(f"{lang}-{number}-{name}")


@pytest.mark.parametrize(("lang", "seed", "target_project"), [("zh", 1, ""), ("en", 2, TARGET_DR)])
def test_page_steps_replicate_then_image_then_server_with_the_sources_sha256(
    world: World, lang: str, seed: int, target_project: str
) -> None:
    source = world.source(seed)
    page = world.page
    # 1. Log in; Storage › Cloud Server Backup.
    world.log_in(DEFAULT_ACCOUNT, lang)
    assert (
        "存储 › 云服务器备份" if lang == "zh" else "Storage › Cloud Server Backup"
    ) in page.text()
    _step(page, lang, 1, "backups")
    # 2. The Backups tab: find the backup.
    page.find("#filter-name").send_keys("no-such-backup\n")  # filters: nothing matches
    page.until(lambda: "no-such-backup" in page.path and not page.all("tr.backup"))
    page.open("/backups")
    row = page.find(f"tr.backup[data-backup-id='{source.backup_id}']")
    assert row.get_attribute("data-status") == "available"
    # 3. More › Create Replication.
    row.find_element("css selector", "summary.more-button").click()
    row.find_element("css selector", "button.create-replication").click()
    dialog = page.find("#replicate-dialog")
    for word in DIALOG_WORDS[lang]:
        assert word in dialog.text, (word, dialog.text)
    name = page.find("#replica-name")
    assert name.get_attribute("value") == f"manual_rep_from_{source.backup_id}"
    # Only regions that accept replication (R5): not the source, not cn-south-1.
    regions = Select(page.find("#target-region"))
    assert [o.get_attribute("value") for o in regions.options] == [TARGET]
    # Several projects there: the main one preselected, another can be picked (P3).
    projects = Select(page.find("#target-project"))
    assert projects.first_selected_option.get_attribute("value") == TARGET_MAIN
    assert {o.get_attribute("value") for o in projects.options} == {TARGET_MAIN, TARGET_DR}
    _step(page, lang, 3, "create-replication")
    # 4. A name P1 refuses: the rule's message as it is typed, then the server's refusal on OK.
    name.clear()
    name.send_keys("bad name!")
    rule = page.find("#name-rule")
    assert P1_MESSAGE[lang] in rule.text
    _step(page, lang, 4, "p1-as-typed")
    page.find("#replicate-ok").click()
    refusal = page.find("#replicate-error")
    assert "P1" in refusal.text and "bad name!" in refusal.text, refusal.text
    _step(page, lang, 5, "p1-refused")
    # 5. A good name (Chinese characters are allowed), the project, OK.
    replica_name = f"副本_{lang}_{seed}"
    name = page.find("#replica-name")
    name.clear()
    name.send_keys(replica_name)
    page.until(lambda: not page.all("#name-rule"), why="the P1 message gone for a good name")
    if target_project:
        Select(page.find("#target-project")).select_by_value(target_project)
    page.find("#replicate-ok").click()
    page.until(lambda: page.path.startswith("/jobs/"), why="the job's page")
    # The job's progress, live, until it succeeds.
    seen: set[str | None] = set()
    live: list[Path] = []  # the screenshot of the job part done

    def ended() -> bool:
        progress = page.find("#job-progress")
        status = progress.get_attribute("data-status")
        if status == "replicating" and not live and page.find("#job-percent").text != "0%":
            live.append(page.shot(f"{lang}-6-job-progress-live"))
        seen.add(status)
        return bool(seen & {"success", "failed"})

    page.until(ended, why="the job to end")
    assert "success" in seen, page.text()
    assert seen & {"waiting", "replicating"}, f"no progress seen live: {seen}"
    assert page.find("#job-percent").text == "100%"
    _step(page, lang, 7, "job-success")
    # The source backup's page lists the replication record.
    job_path = page.path
    record_css = f"tr.record[data-target='{TARGET}']"

    def recorded() -> bool:  # the job's outcome reaches the source backup just after it ends
        page.open(f"/backups/{source.backup_id}")
        return page.find(record_css, timeout=2).get_attribute("data-status") == "success"

    page.until(recorded, why="the replication record on the source backup")
    assert (target_project or TARGET_MAIN) in page.find(record_css).text
    page.open(job_path)
    # 6. Switch to the target region and project: the replica is there. In Chinese with the
    # job's own button, in English with the switcher at the top, as the page says.
    expected_project = target_project or TARGET_MAIN
    if lang == "zh":
        page.find("#view-in-target").click()
    else:
        page.open("/backups")
        Select(page.find("#region-select")).select_by_value(TARGET)
        page.until(  # the region's projects, swapped in
            lambda: (
                {o.get_attribute("value") for o in Select(page.find("#project-select")).options}
                == {TARGET_MAIN, TARGET_DR}
            )
        )
        Select(page.find("#project-select")).select_by_value(expected_project)
        switch = page.find("#switch")
        switch.click()
        page.until(lambda: staleness_of(switch)(page.driver), why="the switched page")
    page.until(lambda: page.path.startswith("/backups"))
    assert Select(page.find("#region-select")).first_selected_option.get_attribute("value") == (
        TARGET
    )
    chosen = Select(page.find("#project-select")).first_selected_option.get_attribute("value")
    assert chosen == expected_project
    replica_row = page.until(
        lambda: next(
            r
            for r in page.all("tr.backup")
            if source.backup_id in r.text and replica_name in r.text
        ),
        why="the replica's row",
    )
    replica_id = replica_row.get_attribute("data-backup-id")
    page.until(
        lambda: (
            page.find(f"tr.backup[data-backup-id='{replica_id}']").get_attribute("data-status")
            == "available"
        ),
        why="the replica available",
    )
    replica_row = page.find(f"tr.backup[data-backup-id='{replica_id}']")
    assert ("复制自" if lang == "zh" else "Replicated from") in replica_row.text
    # A replica cannot be replicated again (R2): the menu offers it disabled.
    replica_row.find_element("css selector", "summary.more-button").click()
    assert not replica_row.find_element("css selector", "button.create-replication").is_enabled()
    _step(page, lang, 8, "replica")
    # Create Image from the replica.
    replica_row.find_element("css selector", "button.create-image").click()
    page.find("#resource-name").send_keys(f"image_{lang}")
    page.find("#dialog-ok").click()
    page.until(lambda: page.path.startswith("/images"), why="the Images tab")
    image_row = page.until(
        lambda: next(r for r in page.all("tr.image") if replica_id in r.text), why="the image"
    )
    _step(page, lang, 9, "image")
    # Create Server from the image.
    image_row.find_element("css selector", "button.create-server").click()
    page.find("#resource-name").send_keys(f"server_{lang}")
    page.find("#dialog-ok").click()
    page.until(lambda: page.path.startswith("/servers/"), why="the new server's page")
    page.until(
        lambda: page.find("#server-status").get_attribute("data-status") == "active",
        why="the server active",
    )
    # Each disk's SHA-256, streamed from the target node: the source's, byte for byte.
    disks = page.all("tr.disk")
    assert len(disks) == len(DISKS_MIB)
    for index, expected in enumerate(source.sha256):
        cell = page.find(f"tr.disk[data-disk-index='{index}'] .sha256-cell")
        cell.find_element("css selector", "button.compute-sha256").click()
        value = page.find(f"tr.disk[data-disk-index='{index}'] code.sha256").text
        assert value == expected, (index, value, expected)
    _step(page, lang, 10, "server-sha256")


def test_policy_with_a_replication_rule_backs_up_now_then_replicates_now_m3(world: World) -> None:
    source = world.source(5)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "zh")
    page.find("#tab-policies").click()
    page.find("#create-policy").click()
    page.find("#policy-name").send_keys("bad name!")
    page.find(f"input[name='server_ids'][value='{source.server_id}']").click()
    page.find("#replication-enabled").click()
    # The replication rule offers only regions that accept replication, main project first (P3).
    regions = Select(page.find("#target-region"))
    assert [o.get_attribute("value") for o in regions.options] == [TARGET]
    projects = Select(page.find("#target-project"))
    assert projects.first_selected_option.get_attribute("value") == TARGET_MAIN
    page.find("#policy-ok").click()
    assert "P1" in page.find("#policy-error").text  # the coordinator's refusal, inline
    name = page.find("#policy-name")
    name.clear()
    name.send_keys("策略_m3")
    page.find("#policy-ok").click()
    assert "CN East-Shanghai1" in page.find("#policy-replication").text
    assert source.server_id in page.find("#policy-servers").text
    page.shot("policy-created")
    # Back up now, then Replicate now (M3): the policy's backup goes to the target region.
    page.find("#backup-now").click()
    page.find("tr.run[data-kind='backup'][data-status='finished'] .item[data-action='backed_up']")
    page.find("#replicate-now").click()
    job_link = page.find(
        "tr.run[data-kind='replication'][data-status='finished'] .item[data-action='replicated'] "
        "a.run-job"
    )
    page.shot("policy-replicated-now")
    job_link.click()
    page.until(
        lambda: page.find("#job-progress").get_attribute("data-status") == "success",
        why="the policy's replication job to succeed",
    )
    assert "策略复制" in page.text() or "立即执行复制策略" in page.text()
    # Edit: the replication rule off and the server out; Replicate now is then not offered.
    page.driver.back()
    page.find("#edit-policy").click()
    page.find("#replication-enabled").click()
    page.find(f"input[name='server_ids'][value='{source.server_id}']").click()
    page.find("#policy-ok").click()
    page.until(lambda: page.find("#policy-replication").text.strip() == "-")
    assert not page.find("#replicate-now").is_enabled()
    assert source.server_id not in page.find("#policy-servers").text


def test_recovery_points_show_the_replicated_server_and_a_chart_of_its_age(world: World) -> None:
    source = world.source(6)
    coordinator = CoordinatorStub(world.cluster.coordinator_channel())
    replicated(coordinator, source.backup_id, SOURCE, TARGET)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    page.find("#tab-rpo").click()
    row = page.find(
        f"tr.recovery-point[data-server-id='{source.server_id}'][data-target='{TARGET}']"
    )
    assert row.find_element("css selector", ".rpo-now").text not in ("", "-")
    lines = page.all("#rpo-chart polyline.rpo-line")
    assert lines and all(line.get_attribute("points") for line in lines)
    page.shot("recovery-points")


def _set_capability(cluster: Cluster, region_id: str, accepts: bool) -> None:
    admin = RegionNodeAdminStub(cluster.channel(region_id))
    request = pb.SetReplicationCapabilityRequest(accepts_replication=accepts)
    admin.SetReplicationCapability(request, timeout=10)


def test_operator_pages_switch_r5_capability_set_a_link_and_add_a_fault_rule(world: World) -> None:
    source = world.source(7)
    page = world.page
    # Without the operator credential: no operator tab, and the page is refused.
    world.log_in(DEFAULT_ACCOUNT, "en")
    assert not page.all("#tab-operator")
    page.open("/operator")
    assert page.find("#message").text == "operator only: log in with the operator credential."
    # A wrong operator credential does not sign in.
    page.open("/login")
    page.find("#token").send_keys(ACCOUNT_TOKENS[DEFAULT_ACCOUNT])
    page.find("#operator-token").send_keys("csbsop_not_the_operator_credential_0")
    page.find("#login").click()
    assert page.find("#login-error").text == "This token is not valid"
    world.log_in(DEFAULT_ACCOUNT, "en", OPERATOR_TOKEN)
    page.find("#tab-operator").click()
    row = f"tr.op-region[data-region-id='{TARGET}']"
    assert page.find(row).get_attribute("data-accepts") == "yes"
    try:
        # R5: the target region stops accepting replication; the dialog no longer offers it.
        page.find(f"{row} button.toggle-capability").click()
        page.until(lambda: page.find(row).get_attribute("data-accepts") == "no")
        page.shot("operator-r5-off")
        page.open("/backups")
        backup_row = page.find(f"tr.backup[data-backup-id='{source.backup_id}']")
        backup_row.find_element("css selector", "summary.more-button").click()
        backup_row.find_element("css selector", "button.create-replication").click()
        assert page.find("#no-targets").text == "No region accepts replication."
        page.find("#replicate-cancel").click()
        page.open("/operator")
        page.find(f"{row} button.toggle-capability").click()
        page.until(lambda: page.find(row).get_attribute("data-accepts") == "yes")
    finally:
        _set_capability(world.cluster, TARGET, True)
    # A link, set and cleared.
    link = page.find("#link-form")
    Select(link.find_element("css selector", "select[name=source]")).select_by_value(TARGET)
    Select(link.find_element("css selector", "select[name=target]")).select_by_value(SOURCE)
    link.find_element("css selector", "input[name=latency_ms]").send_keys("25")
    link.find_element("css selector", "input[name=bandwidth]").send_keys("100 Mbit/s")
    link.find_element("css selector", "button").click()
    pair = f"tr.op-link[data-pair='{TARGET}>{SOURCE}']"
    assert "25 ms" in page.find(pair).text and "12.5 MB/s" in page.find(pair).text
    page.find(f"{pair} button").click()
    page.until(lambda: not page.all(pair), why="the link cleared")
    # A fault rule on the coordinator, added and cleared.
    faults = page.find("#fault-form")
    faults.find_element("css selector", "input[name=method]").send_keys("*/GetPolicy")
    faults.find_element("css selector", "input[name=code]").send_keys("UNAVAILABLE")
    faults.find_element("css selector", "input[name=count]").send_keys("1")
    faults.find_element("css selector", "button").click()
    rule = page.until(
        lambda: next(r for r in page.all("tr.op-fault") if "*/GetPolicy" in r.text), why="the rule"
    )
    page.shot("operator")
    rule_id = rule.get_attribute("data-rule-id")
    rule.find_element("css selector", "button").click()
    page.until(lambda: not page.all(f"tr.op-fault[data-rule-id='{rule_id}']"))


def test_a_failed_job_shows_its_failure_reason(world: World) -> None:
    source = world.source(8)
    page = world.page
    # The target node refuses to take the replica, once: the job fails, naming why.
    rule = fpb.FaultRule(
        method="*/CreateReplica", code="FAILED_PRECONDITION", message="disk on fire", count=1
    )
    faults = FaultInjectionStub(world.cluster.channel(TARGET))
    faults.AddFaultRule(rule, timeout=10)
    try:
        world.log_in(DEFAULT_ACCOUNT, "en")
        open_dialog(page, source.backup_id)
        page.find("#replicate-ok").click()
        page.until(
            lambda: page.find("#job-progress").get_attribute("data-status") == "failed",
            why="the job to fail",
        )
        assert "disk on fire" in page.find("#job-failure").text
    finally:  # spent by the job; cleared if the test ended before it was
        faults.ClearFaultRules(fpb.ClearFaultRulesRequest(), timeout=10)
    page.shot("job-failed")


def test_second_account_never_sees_the_first_accounts_resources(world: World) -> None:
    first = world.source(3)
    page = world.page
    world.log_in(SECOND_ACCOUNT, "en")
    assert page.find("#backups")
    assert first.backup_id not in page.driver.page_source
    # Its projects only: none of the first account's in the switcher.
    projects = [o.get_attribute("value") for o in Select(page.find("#project-select")).options]
    assert projects == [f"{SOURCE}_acme"], projects
    # A region where the account has one project: picking the region is enough (P3).
    own = world.source(9, SECOND_ACCOUNT)
    page.open("/backups")
    open_dialog(page, own.backup_id)
    assert not page.all("#target-project")
    hidden = page.find("#target-project-field input[name=target_project]")
    assert hidden.get_attribute("value") == f"{TARGET}_acme"
    page.find("#replicate-cancel").click()
    # Paging: twenty backups a page, the newest first.
    stub = node(world.cluster.channel(SOURCE, SECOND_ACCOUNT))
    for _ in range(PAGE_SIZE):
        backup(stub, own.server_id)
    page.open("/backups")
    assert page.find("#page-of").text == "1 / 2"
    assert len(page.all("tr.backup")) == PAGE_SIZE
    assert not page.all(f"tr.backup[data-backup-id='{own.backup_id}']")  # the oldest
    page.find("#page-next").click()
    page.find(f"tr.backup[data-backup-id='{own.backup_id}']")
    assert page.find("#page-of").text == "2 / 2" and len(page.all("tr.backup")) == 1
    page.open(f"/backups/{first.backup_id}")
    assert first.backup_id in page.find("#message").text  # NOT_FOUND, as if it never existed
    page.open(f"/servers/{first.server_id}")
    assert page.find("#message")
    page.open("/jobs")
    assert first.backup_id not in page.find("#jobs").text
    page.shot("acme-jobs")


def _post(url: str, fields: dict[str, str], cookie: str) -> int:
    data = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_form_posted_without_its_csrf_token_is_refused(world: World) -> None:
    source = world.source(4)
    page = world.page
    world.log_in(DEFAULT_ACCOUNT, "en")
    # From the console's own page (the session cookie goes along): no token, a wrong token.
    status = page.driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/backups/' + arguments[0] + '/replicate', {method: 'POST',
          body: new URLSearchParams({target_region: arguments[1]})}).then(r => done(r.status));""",
        source.backup_id,
        TARGET,
    )
    assert status == 403
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in page.driver.get_cookies())
    url = f"{world.console.url}/backups/{source.backup_id}/replicate"
    fields = {"target_region": TARGET}
    assert _post(url, fields, cookie) == 403
    assert _post(url, {**fields, "csrf_token": "not-the-sessions"}, cookie) == 403
    # Nothing was done: no job for the backup.
    jobs = CoordinatorStub(world.cluster.coordinator_channel()).ListReplicationJobs(
        cpb.ListReplicationJobsRequest(source_backup_id=source.backup_id), timeout=10
    )
    assert list(jobs.jobs) == []
    # The session cookie is HttpOnly and SameSite=Strict; the token is not in it.
    session = next(c for c in page.driver.get_cookies() if c["name"] == "csbs_console_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert ACCOUNT_TOKENS[DEFAULT_ACCOUNT] not in json.dumps(page.driver.get_cookies())


def test_csbs_cluster_starts_the_console_over_tls_prints_its_address_and_stops_it(
    tmp_path: Path,
) -> None:
    """`csbs-cluster --tls`: the console is started with the others and its address printed; a
    user logs in (plain HTTP client, cookies, the form's CSRF token) and sees the regions the
    coordinator's catalog gives over TLS; the console stops with the cluster."""
    config = write_cluster_config(tmp_path, regions=[DEFAULT_REGIONS[0]])
    cluster = subprocess.Popen(
        [str(Path(sys.executable).parent / "csbs-cluster"), "--config", str(config), "--tls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    assert cluster.stdout is not None
    seen = ""
    try:
        while "Ctrl-C stops the cluster." not in seen:
            line = cluster.stdout.readline()
            assert line, f"csbs-cluster ended early:\n{seen}"
            seen += line
        url = next(line.split()[-1] for line in seen.splitlines() if line.startswith("console "))
        assert url.startswith("http://127.0.0.1:"), seen
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        with browser.open(f"{url}/login", timeout=10) as login:
            page = login.read().decode()
            assert login.headers["X-Frame-Options"] == "DENY"
        assert "登录管理控制台" in page  # Chinese unless the user picks English
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found is not None
        form = {"csrf_token": found.group(1), "token": ACCOUNT_TOKENS[DEFAULT_ACCOUNT]}
        data = urllib.parse.urlencode(form).encode()
        with browser.open(f"{url}/login", data=data, timeout=30) as backups:
            assert backups.url == f"{url}/backups"
            assert "CN North-Beijing4" in backups.read().decode()
    finally:
        cluster.send_signal(signal.SIGINT)
        cluster.wait(timeout=30)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/healthz", timeout=2)
