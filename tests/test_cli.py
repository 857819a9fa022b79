"""The `csbs` command line, driven as a user drives it: the installed executable run as a
subprocess against a real cluster (region nodes and coordinator), its exit codes, its one-line
errors, its `--json` checked field by field against what the services answer, its progress on a
pipe and on a real (pseudo-)terminal, Ctrl-C while waiting, and `csbs demo`."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from typer.main import get_command
from typer.testing import CliRunner

from csbs.cli.main import app
from csbs.tls import ca_path, ensure_process_tls, server_credentials
from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from tests.harness import (
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
    OPERATOR_TOKEN,
    REPO_ROOT,
    Cluster,
    write_cluster_config,
)
from tests.node_helpers import MIB, node, seeded_bytes

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
TARGET_DR = "cn-east-3_dr"  # the target region's non-main project (P3)
NO_REPLICATION = "cn-south-1"

CSBS = Path(sys.executable).parent / "csbs"
RUN_TIMEOUT = 180.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

pytestmark = pytest.mark.timeout(300)


def cluster_env(cluster: Cluster) -> dict[str, str]:
    """The environment a user of the cluster has: its config, the default account's token and
    the operator credential."""
    return _clean_env(
        CSBS_CONFIG=str(cluster.config.path),
        CSBS_TOKEN=ACCOUNT_TOKENS[DEFAULT_ACCOUNT],
        CSBS_OPERATOR_TOKEN=OPERATOR_TOKEN,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBS_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert CSBS.exists(), f"no {CSBS}: install the project (make install) so the script exists"
    with Cluster(write_cluster_config(tmp_path_factory.mktemp("cli"))) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> dict[str, str]:
    return cluster_env(cluster)


def csbs(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Runs the csbs executable; it must end with exit status `code`."""
    done = subprocess.run(
        [str(CSBS), *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == code, (
        f"csbs {' '.join(args)}: exit {done.returncode}, expected {code}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}"
    )
    return done


def csbs_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(csbs(env, *args, "--json").stdout)


def as_json(message: Any) -> Any:
    """A message as the CLI's --json prints it (the .proto's field names, every field)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclass(frozen=True)
class Story:
    """What the demo story made, through the CLI, for the tests that look at it."""

    server_id: str
    disk_data: tuple[bytes, bytes]  # what was written at offset 0 of disk 0 and 1 MiB of disk 1
    source_sums: tuple[str, str]
    backup: dict[str, Any]
    job: dict[str, Any]
    image: dict[str, Any]
    copy: dict[str, Any]


@pytest.fixture(scope="module")
def story(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Story:
    """The demo story, command by command: a server with data on both disks, backed up,
    replicated to the target region's non-main project, an image of the replica there and a
    server from it."""
    tmp = tmp_path_factory.mktemp("story")
    server = csbs_json(
        env, "server", "create", "--name", "cli-src", "--disk", "64MiB", "--disk", "32MiB"
    )
    sid = server["server_id"]
    data = (seeded_bytes(11, 24 * MIB), seeded_bytes(12, 12 * MIB))
    (tmp / "d0").write_bytes(data[0])
    (tmp / "d1").write_bytes(data[1])
    written = csbs(env, "server", "write", sid, "--disk", "0", "--file", str(tmp / "d0"))
    assert f"wrote 24 MiB ({24 * MIB} bytes) to disk 0" in written.stdout
    answer = csbs_json(
        env, "server", "write", sid, "--disk", "1", "--offset", "1MiB", "--file", str(tmp / "d1")
    )
    assert answer == {"bytes_written": str(12 * MIB)}
    sums = tuple(
        csbs_json(env, "server", "read", sid, "--disk", str(d), "--sha256")["sha256"]
        for d in (0, 1)
    )
    backup = csbs_json(env, "backup", "create", sid, "--name", "cli-backup", "--wait")
    job = csbs_json(
        env,
        "backup",
        "replicate",
        backup["backup_id"],
        "--to",
        TARGET,
        "--to-project",
        TARGET_DR,
        "--name",
        "备份_副本-01",
        "--wait",
    )
    there = ("--region", TARGET, "--project", TARGET_DR)
    image = csbs_json(env, *there, "image", "create", job["replica_id"], "--name", "cli-image")
    # The cluster options may come after the command's name too.
    copy = csbs_json(
        env,
        "server",
        "create",
        "--image",
        image["image_id"],
        "--name",
        "cli-copy",
        "--wait",
        *there,
    )
    return Story(sid, data, (sums[0], sums[1]), backup, job, image, copy)


# --- the story ---------------------------------------------------------------------------------


def test_m1_story_through_the_cli_ends_in_a_server_with_the_source_disks(
    env: dict[str, str], story: Story
) -> None:
    there = ("--region", TARGET, "--project", TARGET_DR)
    assert story.backup["status"] == "BACKUP_STATUS_AVAILABLE"
    assert story.job["status"] == "REPLICATION_JOB_STATUS_SUCCESS"
    assert story.copy["status"] == "SERVER_STATUS_ACTIVE"
    assert story.copy["project_id"] == TARGET_DR
    copy_id = story.copy["server_id"]
    for disk in (0, 1):
        digest = csbs_json(env, *there, "server", "read", copy_id, "--disk", str(disk), "--sha256")
        assert digest["sha256"] == story.source_sums[disk]
    # `server read > FILE`: the very bytes that were written on the source.
    raw = subprocess.run(
        [str(CSBS), *there, "server", "read", copy_id, "--disk", "0", "--length", "24MiB"],
        env=env,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert raw.stdout == story.disk_data[0]
    whole = subprocess.run(
        [str(CSBS), *there, "server", "read", copy_id, "--disk", "1"],
        env=env,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout
    assert len(whole) == 32 * MIB
    assert whole[MIB : 13 * MIB] == story.disk_data[1]
    assert hashlib.sha256(whole).hexdigest() == story.source_sums[1]


def test_the_cluster_options_come_from_csbs_region_and_csbs_project(
    env: dict[str, str], story: Story
) -> None:
    scoped = {**env, "CSBS_REGION": TARGET, "CSBS_PROJECT": TARGET_DR}
    images = csbs_json(scoped, "image", "list")
    assert story.image["image_id"] in [i["image_id"] for i in images]
    # An option on the command line wins over the variable.
    mine = csbs_json(
        scoped, "--region", SOURCE, "--project", "cn-north-4_default", "backup", "list"
    )
    assert story.backup["backup_id"] in [b["backup_id"] for b in mine]


# --- --json ------------------------------------------------------------------------------------


def test_backup_show_json_is_the_backup_field_by_field(
    cluster: Cluster, env: dict[str, str], story: Story
) -> None:
    bid = story.backup["backup_id"]
    shown = csbs_json(env, "backup", "show", bid)
    assert shown["backup_id"] == bid
    assert shown["project_id"] == "cn-north-4_default"
    assert shown["name"] == "cli-backup"
    assert shown["server_id"] == story.server_id
    assert shown["server_type"] == "SERVER_TYPE_ECS"
    assert shown["status"] == "BACKUP_STATUS_AVAILABLE"
    assert shown["size_bytes"] == str(96 * MIB)  # uint64 is a string in the JSON mapping
    assert shown["bytes_stored"] == str(36 * MIB)
    assert [(d["disk_index"], d["size_bytes"], d["system"]) for d in shown["disks"]] == [
        (0, str(64 * MIB), True),
        (1, str(32 * MIB), False),
    ]
    assert shown["origin"]["replicated"] is False
    [record] = shown["replications"]
    assert record["target_region_id"] == TARGET
    assert record["target_project_id"] == TARGET_DR
    assert record["replica_id"] == story.job["replica_id"]
    assert record["job_id"] == story.job["job_id"]
    assert record["way"] == "REPLICATION_WAY_MANUAL"
    assert record["status"] == "REPLICATION_RECORD_STATUS_SUCCESS"
    assert record["replica_deleted"] is False
    # Exactly the resource: what the region node answers, as JSON.
    answer = node(cluster.channel(SOURCE)).GetBackup(pb.GetBackupRequest(backup_id=bid), timeout=10)
    assert shown == as_json(answer)


def test_replica_job_and_image_json(env: dict[str, str], story: Story) -> None:
    there = ("--region", TARGET, "--project", TARGET_DR)
    bid, rid = story.backup["backup_id"], story.job["replica_id"]
    replica = csbs_json(env, *there, "backup", "show", rid)
    assert replica["name"] == "备份_副本-01"
    assert replica["project_id"] == TARGET_DR
    assert replica["status"] == "BACKUP_STATUS_AVAILABLE"
    assert replica["image_ids"] == [story.image["image_id"]]
    origin = replica["origin"]
    assert origin["replicated"] is True
    assert origin["source_region_id"] == SOURCE
    assert origin["source_project_id"] == "cn-north-4_default"
    assert origin["source_backup_id"] == bid
    assert origin["way"] == "REPLICATION_WAY_MANUAL"
    assert origin["replication_job_id"] == story.job["job_id"]

    job = csbs_json(env, "job", "show", story.job["job_id"])
    assert job["job_id"] == story.job["job_id"]
    assert job["way"] == "REPLICATION_WAY_MANUAL"
    assert (job["source_region_id"], job["source_backup_id"]) == (SOURCE, bid)
    assert (job["target_region_id"], job["target_project_id"]) == (TARGET, TARGET_DR)
    assert job["replica_id"] == rid
    assert job["status"] == "REPLICATION_JOB_STATUS_SUCCESS"
    assert job["progress"]["bytes_planned"] == str(36 * MIB)
    assert job["failure_reason"] == ""
    jobs = csbs_json(env, "job", "list", "--backup", bid)
    assert [j["job_id"] for j in jobs] == [story.job["job_id"]]

    image = csbs_json(env, *there, "image", "show", story.image["image_id"])
    assert image == story.image
    assert image["backup_id"] == rid
    assert image["status"] == "IMAGE_STATUS_AVAILABLE"
    assert [d["system"] for d in image["disks"]] == [True, False]


def test_list_json_is_a_list_of_the_resources(env: dict[str, str], story: Story) -> None:
    regions = csbs_json(env, "region", "list")
    assert [r["region_id"] for r in regions] == [SOURCE, TARGET, NO_REPLICATION]
    # A false field is there too, so that a script never misses the key (R5).
    assert [r["accepts_replication"] for r in regions] == [True, True, False]
    assert [(p["project_id"], p["main"]) for p in regions[1]["projects"]] == [
        ("cn-east-3_default", True),
        (TARGET_DR, False),
    ]
    targets = csbs_json(env, "region", "targets")
    assert [t["region_id"] for t in targets] == [TARGET]  # R5: cn-south-1 is not offered
    servers = csbs_json(env, "server", "list")
    assert story.server_id in [s["server_id"] for s in servers]
    backups = csbs_json(env, "--json", "backup", "list", "--server", story.server_id)
    assert [b["backup_id"] for b in backups] == [story.backup["backup_id"]]


def test_tables_are_aligned_and_show_whole_ids(env: dict[str, str], story: Story) -> None:
    out = csbs(env, "backup", "list", "--server", story.server_id).stdout.splitlines()
    header, row = out[0], out[1]
    assert header.split() == ["ID", "NAME", "STATUS", "SERVER", "DISKS", "ORIGIN", "CREATED"]
    assert row.startswith(story.backup["backup_id"] + "  ")
    assert row.index("cli-backup") == header.index("NAME")
    assert row.index("available") == header.index("STATUS")
    assert not any(line != line.rstrip() for line in out)


# --- errors ------------------------------------------------------------------------------------


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_r2_replicating_a_replica_is_refused_in_one_line_with_exit_1(
    env: dict[str, str], story: Story
) -> None:
    done = csbs(
        env,
        *("--region", TARGET, "--project", TARGET_DR),
        *("backup", "replicate", story.job["replica_id"], "--to", SOURCE),
        code=1,
    )
    line = _one_error_line(done)
    assert line.startswith(f"error: R2: backup {story.job['replica_id']} ")
    assert done.stdout == ""


def test_r5_replicating_to_a_region_that_does_not_accept_is_refused(
    env: dict[str, str], story: Story
) -> None:
    done = csbs(
        env, "backup", "replicate", story.backup["backup_id"], "--to", NO_REPLICATION, code=1
    )
    assert _one_error_line(done).startswith(f"error: R5: region {NO_REPLICATION} ")


def test_an_unknown_backup_is_not_found_naming_the_region(env: dict[str, str]) -> None:
    missing = str(uuid.uuid4())
    done = csbs(env, "backup", "show", missing, code=1)
    assert _one_error_line(done) == (
        f"error: backup {missing!r} not found in project {SOURCE}_default (in region {SOURCE})"
    )
    done = csbs(env, "job", "show", missing, code=1)
    assert _one_error_line(done).startswith("error: replication job")


def test_with_json_a_refusal_is_one_json_object_on_stderr(env: dict[str, str]) -> None:
    """Issue 14: `--json` refusals are JSON too, with the status code and the exit code."""
    missing = str(uuid.uuid4())
    done = csbs(env, "backup", "show", missing, "--json", code=1)
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    error = json.loads(line)["error"]
    assert error["status"] == "NOT_FOUND" and error["exit_code"] == 1
    assert error["message"].startswith(f"backup {missing!r} not found")


def test_a_wrong_option_is_a_usage_error_with_exit_2(env: dict[str, str]) -> None:
    done = csbs(env, "--region", "mars-1", "server", "list", code=2)
    assert _one_error_line(done) == (
        "error: --region: no region 'mars-1' in the cluster "
        f"(it has {SOURCE}, {TARGET}, {NO_REPLICATION})"
    )
    done = csbs(env, "server", "create", "--disk", "lots", code=2)
    assert "--disk" in _one_error_line(done)
    csbs(env, "server", "show", code=2)  # a missing argument: typer's own usage error


def test_a_cluster_that_is_not_running_exits_3_saying_how_to_start_it(tmp_path: Path) -> None:
    never_started = _clean_env(CSBS_CONFIG=str(write_cluster_config(tmp_path)))
    line = _one_error_line(csbs(never_started, "server", "list", code=3))
    assert line.startswith(f"error: cannot reach region {SOURCE}: it has published no address")
    assert line.endswith(
        "is the cluster running? Start it with `make cluster` (`make cluster CONFIG=FILE` for "
        "another config; then give csbs the same file with --config FILE or CSBS_CONFIG)"
    )
    # Nothing listens on port 1.
    nowhere = ("--address", f"{SOURCE}=127.0.0.1:1", "--coordinator", "127.0.0.1:1")
    line = _one_error_line(csbs(never_started, *nowhere, "backup", "list", code=3))
    assert line == (
        f"error: cannot reach region {SOURCE} at 127.0.0.1:1: is the cluster running? "
        "Start it with `make cluster` (`make cluster CONFIG=FILE` for another config; then give "
        "csbs the same file with --config FILE or CSBS_CONFIG)"
    )
    line = _one_error_line(csbs(never_started, *nowhere, "job", "list", code=3))
    assert line.startswith("error: cannot reach the coordinator at 127.0.0.1:1")


# --- waiting -----------------------------------------------------------------------------------


def _server_with_data(env: dict[str, str], seed: int) -> str:
    """A fresh server with 32 MiB of data of its own (written from stdin); returns its ID."""
    sid: str = csbs_json(env, "server", "create", "--disk", "64MiB")["server_id"]
    done = subprocess.run(
        [str(CSBS), "server", "write", sid, "--disk", "0", "--file", "-"],
        env=env,
        input=seeded_bytes(seed, 32 * MIB),
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return sid


def test_wait_when_not_a_terminal_prints_plain_progress_lines_ending_with_the_status(
    env: dict[str, str],
) -> None:
    sid = _server_with_data(env, seed=21)
    done = csbs(env, "backup", "create", sid, "--wait")
    lines = done.stderr.strip().splitlines()
    assert lines, "no progress lines"
    assert not ANSI.search(done.stderr), "escape codes on a pipe"
    assert all(re.match(r"backup [0-9a-f]{8}: ", line) for line in lines), lines
    assert re.fullmatch(r"backup [0-9a-f]{8}: available, 32 MiB in \d+\.\ds", lines[-1])
    backup_id = re.search(r"^ID\s+(\S+)", done.stdout, re.MULTILINE)
    assert backup_id is not None
    done = csbs(env, "backup", "replicate", backup_id[1], "--to", TARGET, "--wait", "--json")
    lines = done.stderr.strip().splitlines()
    assert all(re.match(r"replication [0-9a-f]{8}: ", line) for line in lines[:-1]), lines
    assert re.fullmatch(r"replication [0-9a-f]{8}: success, 32 MiB in \d+\.\ds", lines[-2])
    assert lines[-1].startswith("Make an image of the replica with `csbs --region cn-east-3")
    assert json.loads(done.stdout)["status"] == "REPLICATION_JOB_STATUS_SUCCESS"


class Terminal:
    """A command run on a pseudo-terminal (120 x 40), as if typed in one."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._master = master
        self.process = subprocess.Popen(
            [str(CSBS), *args],
            env={**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the terminal: {self.text()!r}")
            self._read(0.1)

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None or self._read(0.05):
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"still running: {self.text()!r}")
            self._read(0.1)
        os.close(self._master)
        return self.process.returncode

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self._master, 65536)
        except OSError as exc:  # EIO: the other side has closed
            if exc.errno != errno.EIO:
                raise
            return False
        self.output += chunk
        return bool(chunk)


def test_wait_on_a_terminal_shows_a_live_progress_bar_with_bytes_rate_and_time_left(
    env: dict[str, str],
) -> None:
    sid = _server_with_data(env, seed=31)
    backup_id = csbs_json(env, "backup", "create", sid, "--wait")["backup_id"]
    terminal = Terminal(env, "backup", "replicate", backup_id, "--to", TARGET, "--wait")
    assert terminal.finish(RUN_TIMEOUT) == 0, terminal.text()
    screen = terminal.text()
    assert "\x1b[" in screen  # drawn with escape codes: a live display
    plain = ANSI.sub("", screen)
    assert re.search(r"replication [0-9a-f]{8} success .*32\.0/32\.0 MiB", plain), plain
    assert re.search(r"MiB\s+[\d.]+ [kMG]?B/s\s+\d:\d\d:\d\d", plain), plain  # rate, time left
    assert "Status        success" in plain


def test_ctrl_c_while_waiting_stops_the_waiting_not_the_job_and_says_how_to_resume(
    cluster: Cluster, env: dict[str, str], story: Story
) -> None:
    job_id = story.job["job_id"]
    # A coordinator that answers nothing keeps the watch waiting as long as the test needs.
    cluster.coordinator.pause()
    try:
        terminal = Terminal(env, "job", "watch", job_id)
        terminal.read_until(r"replication [0-9a-f]{8}", timeout=30)
        terminal.process.send_signal(signal.SIGINT)
        code = terminal.finish(30)
    finally:
        cluster.coordinator.resume()
    assert code == 130, terminal.text()
    plain = ANSI.sub("", terminal.text())
    assert f"stopped waiting; the replication {job_id[:8]} goes on" in plain
    assert f"Follow it again with `csbs job watch {job_id}`" in plain
    assert "Traceback" not in plain
    assert csbs_json(env, "job", "show", job_id)["status"] == "REPLICATION_JOB_STATUS_SUCCESS"


# --- the token ---------------------------------------------------------------------------------


@contextlib.contextmanager
def stand_in_node(credentials: Any = None) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A stand-in region node (r1) that only says who it is, and remembers the metadata of each
    call; plain, or TLS with `credentials`. Yields its port and the metadata seen."""
    seen: list[dict[str, str]] = []

    def region_info(request: pb.GetRegionInfoRequest, context: Any) -> common_pb2.RegionInfo:
        seen.append(dict(context.invocation_metadata()))
        return common_pb2.RegionInfo(region_id="r1", display_name="R1", accepts_replication=True)

    handler = grpc.unary_unary_rpc_method_handler(
        region_info,
        request_deserializer=pb.GetRegionInfoRequest.FromString,
        response_serializer=common_pb2.RegionInfo.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("csbs.v1.RegionNode", {"GetRegionInfo": handler}),)
    )
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, seen
    finally:
        server.stop(0)


def test_the_token_is_sent_as_bearer_authorization_metadata() -> None:
    with stand_in_node() as (port, seen):
        address = ("--address", f"r1=127.0.0.1:{port}")
        env = _clean_env(CSBS_TOKEN="s3cret-token")
        regions = csbs_json(env, *address, "region", "list")
        assert [r["region_id"] for r in regions] == ["r1"]
        csbs_json(env, *address, "region", "list", "--token", "another")
    assert [m.get("authorization") for m in seen] == ["Bearer s3cret-token", "Bearer another"]


def test_ca_makes_a_tls_channel_that_trusts_that_root(tmp_path: Path) -> None:
    material = ensure_process_tls(tmp_path / "tls", "stand-in")
    cert = ca_path(tmp_path / "tls")
    credentials = server_credentials(material)
    with stand_in_node(credentials) as (port, seen):
        address = ("--address", f"r1=127.0.0.1:{port}")
        regions = csbs_json(
            _clean_env(), *address, "--ca", str(cert), "--token", "t", "region", "list"
        )
        assert [r["region_id"] for r in regions] == ["r1"]
        # Without the root certificate the channel is plain, and a TLS port does not answer it.
        csbs(_clean_env(), *address, "region", "list", code=3)
    assert [m.get("authorization") for m in seen] == ["Bearer t"]
    done = csbs(
        _clean_env(), *address, "--ca", str(tmp_path / "none.pem"), "region", "list", code=2
    )
    assert _one_error_line(done).startswith("error: --ca: "), done.stderr


# --- help and the demo -------------------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    root = get_command(app)
    paths: list[tuple[str, ...]] = [()]
    for name, group in getattr(root, "commands", {}).items():
        paths.append((name,))
        for sub in getattr(group, "commands", {}):
            paths.append((name, sub))
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "csbs")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="csbs")
    assert result.exit_code == 0, result.output
    assert "Usage: csbs" in result.output


def test_there_is_every_command_the_issue_names() -> None:
    paths = set(_command_paths())
    wanted = {
        ("region", "list"),
        ("region", "targets"),
        *(("server", c) for c in ("create", "list", "show", "delete", "write", "read")),
        *(("backup", c) for c in ("create", "list", "show", "delete", "restore", "replicate")),
        *(("job", c) for c in ("list", "show", "watch")),
        *(("image", c) for c in ("create", "list", "show", "delete")),
        *(
            ("policy", c)
            for c in (
                *("create", "list", "show", "update", "delete"),
                *("add-servers", "remove-servers", "run", "runs"),
            )
        ),
        *(("clock", c) for c in ("show", "advance")),
        ("demo",),
    }
    assert wanted <= paths


def test_csbs_demo_runs_the_whole_story_against_a_running_cluster(env: dict[str, str]) -> None:
    done = csbs(env, "demo", "--data-mib", "8")
    out = done.stdout + done.stderr
    assert "$ csbs server create --name demo-source --disk 16MiB --disk 8MiB" in out
    assert "$ csbs backup replicate " in out
    assert f"--to {TARGET} --to-project {TARGET_DR}" in out
    assert re.search(r"^replication [0-9a-f]{8}: success, ", out, re.MULTILINE)
    assert "byte-for-byte the same" in out
    assert f"$ csbs --region {TARGET} --project {TARGET_DR} server create --image " in out
    assert re.search(r"^error: R2: ", out, re.MULTILINE)
    assert re.search(rf"^error: R5: region {NO_REPLICATION} ", out, re.MULTILINE)
    assert out.count("(exit status 1)") == 2
    sums = re.findall(r"^([0-9a-f]{64})  \S+ disk (\d)$", out, re.MULTILINE)
    assert len(sums) == 4
    assert [s for s, _ in sums[:2]] == [s for s, _ in sums[2:]]


def test_the_quickstart_makes_its_own_files_with_the_sha256_the_readme_shows(
    tmp_path: Path,
) -> None:
    """Issue 14: the quickstart writes system-disk.txt and data-disk.txt; a step before makes
    them, and a disk holding the first has the SHA-256 the README shows."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "$ .venv/bin/python -m csbs.cli.demo_files" in readme
    done = subprocess.run(
        [sys.executable, "-m", "csbs.cli.demo_files", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in readme
    system = (tmp_path / "system-disk.txt").read_bytes()
    assert len(system) == 32 * MIB and len((tmp_path / "data-disk.txt").read_bytes()) == 16 * MIB
    # Disk 0 is 64 MiB: the file, then zeros.
    shown = re.search(r"\n([0-9a-f]{64})  \S+ disk 0\n", readme)
    assert shown is not None
    assert hashlib.sha256(system + bytes(32 * MIB)).hexdigest() == shown.group(1)


def test_a_second_cluster_on_ports_in_use_stops_before_issuing_or_printing_anything(
    tmp_path: Path,
) -> None:
    """Issue 14: a cluster whose ports are taken (here by a socket this test listens on, as a
    first cluster would) says so at once, exit 2, with no tokens, no region table, no
    traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_cluster_config(tmp_path)
        # Every process is on port 0 but the first region (the coordinator's table comes first).
        sections = path.read_text(encoding="utf-8").split("[[regions]]")
        sections[1] = sections[1].replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"', 1)
        path.write_text("[[regions]]".join(sections), encoding="utf-8")
        done = subprocess.run(
            [str(CSBS.parent / "csbs-cluster"), "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    assert done.returncode == 2, done
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line == (
        f"csbs-cluster: 127.0.0.1:{port} (region cn-north-4) already in use: is another cluster "
        "running? Stop it, or give this config other ports (port 0 takes a free one)"
    )
    assert not (tmp_path / "data" / "secrets.json").exists()
