"""The console's tests' world: one cluster (a slow link from {SOURCE} to {TARGET}, so a job's
progress is seen live), one console and one browser for a test module, a backed-up server to
start from, and logging in as an account in a language."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from console.process import ConsoleProcess, console_process
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub
from tests.browser import Page, chromium
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, Cluster, write_cluster_config
from tests.node_helpers import MIB, backup, disk_sha256, make_server, node, seeded_bytes, write

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
TARGET_MAIN = "cn-east-3_default"
TARGET_DR = "cn-east-3_dr"
DISKS_MIB = [8, 4]
# Slow enough that the job's progress is seen live for a moment, fast enough to keep it short.
LINK_BYTES_PER_SECOND = 6 * MIB
# The product page's own words in the dialog (Table 1).
DIALOG_WORDS = {
    "zh": ["创建复制", "名称", "描述", "目标区域", "确定"],
    "en": ["Create Replication", "Name", "Description", "Target Region", "OK"],
}
P1_MESSAGE = {
    "zh": "只能由中文字符、英文字母、数字、下划线、中划线组成",
    "en": "Only Chinese characters, English letters, digits",
}


@dataclass(frozen=True)
class Source:
    """A backup of a server made for one test, and its disks' SHA-256."""

    server_id: str
    backup_id: str
    sha256: tuple[str, ...]


@dataclass
class World:
    cluster: Cluster
    console: ConsoleProcess
    page: Page

    def source(self, seed: int, account: str = DEFAULT_ACCOUNT) -> Source:
        stub = node(self.cluster.channel(SOURCE, account))
        server = make_server(stub, DISKS_MIB, name=f"console-source-{seed}")
        for index, size in enumerate(DISKS_MIB):
            write(stub, server.server_id, index, 0, seeded_bytes(seed * 10 + index, size * MIB))
        taken = backup(stub, server.server_id)
        hashes = tuple(disk_sha256(stub, server.server_id, i) for i in range(len(DISKS_MIB)))
        return Source(server.server_id, taken.backup_id, hashes)

    def log_in(self, account: str, lang: str, operator_token: str = "") -> None:
        page = self.page
        page.driver.delete_all_cookies()
        page.open("/login")
        page.find(f"#lang-{lang}").click()  # a no-op click on the language already shown
        page.until(lambda: (page.find("html").get_attribute("lang") or "").startswith(lang[:2]))
        page.find("#token").send_keys(ACCOUNT_TOKENS[account])
        if operator_token:
            page.find("#operator-token").send_keys(operator_token)
        page.find("#login").click()
        page.until(lambda: page.path.startswith("/backups"), why="the Backups tab after login")


def world_in(tmp: Path) -> Iterator[World]:
    """The world, for a module-scoped fixture: `yield from world_in(tmp)`."""
    with Cluster(write_cluster_config(tmp / "cluster")) as cluster:
        cluster.start(coordinator=True)
        admin = CoordinatorAdminStub(cluster.coordinator_channel())
        link = cpb.Link(
            source_region_id=SOURCE,
            target_region_id=TARGET,
            bandwidth_bytes_per_second=LINK_BYTES_PER_SECOND,
        )
        admin.SetLink(cpb.SetLinkRequest(link=link), timeout=10)
        console = console_process(cluster.config, ConsoleProcess)
        console.start()
        try:
            console.wait_ready()
            with chromium(tmp / "profile") as driver:
                yield World(cluster, console, Page(driver, console.url, tmp / "screenshots"))
        finally:
            console.stop()


def open_dialog(page: Page, backup_id: str) -> None:
    row = page.find(f"tr.backup[data-backup-id='{backup_id}']")
    row.find_element("css selector", "summary.more-button").click()
    row.find_element("css selector", "button.create-replication").click()
    page.find("#replicate-dialog")
