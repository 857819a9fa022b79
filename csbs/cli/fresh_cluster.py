"""A fresh cluster for `csbs demo --fresh-cluster` (`make demo`): the regions, projects and
accounts of a config, every process on an ephemeral port with its data in a temp dir, run by
`csbs-cluster` in the background and stopped (SIGTERM, which stops its children in order) when
the demo is done. Ephemeral ports, so that it never collides with a `make cluster` that runs."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from csbs.cli.errors import Unreachable
from csbs.cluster import COORDINATOR_SERVICE, REGION_NODE_READY_SERVICE, check_health
from csbs.config import ADDRESS_FILE, ClusterConfig, load_cluster_config
from csbs.rpc import open_channel
from csbs.tls import TlsError, ca_path, read_ca

ANY_PORT = "127.0.0.1:0"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL = 0.1


class ClusterDidNotStart(Unreachable):
    """The demo's own cluster exited or was not ready in time (exit 3, as when unreachable)."""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_fresh_config(
    base: ClusterConfig, directory: Path, tokens: Mapping[str, str], tls: bool = False
) -> Path:
    """`base` with every process on an ephemeral port and its data under `directory`, each
    account with the token `tokens` gives it (else one issued at first start), TLS on every
    channel if `base` or `tls` asks for it."""
    c = base.coordinator
    lines = [
        "[cluster]",
        f"data_dir = {_toml(directory / 'data')}",
        f"chunk_size = {_toml(base.chunk_size)}",
        f"clock = {_toml('simulated' if base.simulated_clock else 'wall')}",
        f"tls = {_toml(tls or base.tls)}",
        "",
        "[coordinator]",
        f"listen = {_toml(ANY_PORT)}",
        f"retry_budget_seconds = {_toml(c.retry_budget_seconds)}",
        f"cleanup_interval_seconds = {_toml(c.cleanup_interval_seconds)}",
    ]
    for account in base.accounts:
        lines += ["", "[[accounts]]", f"id = {_toml(account.account_id)}"]
        lines.append(f"name = {_toml(account.name)}")
        if account.account_id in tokens:
            lines.append(f"tokens = [{_toml(tokens[account.account_id])}]")
    for region in base.regions:
        projects = ", ".join(
            f"{{ id = {_toml(p.project_id)}, name = {_toml(p.name)}, "
            f"account = {_toml(p.account_id)}, main = {_toml(p.main)} }}"
            for p in region.projects
        )
        lines += [
            "",
            "[[regions]]",
            f"id = {_toml(region.region_id)}",
            f"name = {_toml(region.display_name)}",
            f"listen = {_toml(ANY_PORT)}",
            f"accepts_replication = {_toml(region.accepts_replication)}",
            f"projects = [{projects}]",
        ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _serving(config: ClusterConfig, data_dir: Path, service: str) -> bool:
    try:
        address = (data_dir / ADDRESS_FILE).read_text().strip()
        ca = read_ca(ca_path(config.tls_dir)) if config.tls else None
    except (FileNotFoundError, TlsError):
        return False
    if not address:
        return False
    with open_channel(address, ca) as channel:
        return check_health(channel, service, timeout=1.0) == "SERVING"


def _wait_ready(config: ClusterConfig, process: subprocess.Popen[bytes], log: Path) -> None:
    waiting = [(r.data_dir, REGION_NODE_READY_SERVICE) for r in config.regions]
    waiting.append((config.coordinator.data_dir, COORDINATOR_SERVICE))
    deadline = time.monotonic() + READY_TIMEOUT
    while waiting:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise ClusterDidNotStart(
                f"the demo's cluster exited with code {process.returncode}: {tail}"
            )
        if time.monotonic() > deadline:
            raise ClusterDidNotStart(
                f"the demo's cluster was not ready after {READY_TIMEOUT:.0f}s; see {log}"
            )
        waiting = [(d, s) for d, s in waiting if not _serving(config, d, s)]
        time.sleep(POLL)


@contextlib.contextmanager
def fresh_cluster(
    base: ClusterConfig, tokens: Mapping[str, str], tls: bool = False
) -> Iterator[Path]:
    """Runs a fresh copy of `base`'s cluster until the block ends; yields its config's path.
    The temp dir is the user's alone (0700), as the tokens in its config are secrets."""
    with tempfile.TemporaryDirectory(prefix="csbs-demo-cluster-") as tmp:
        path = write_fresh_config(base, Path(tmp), tokens, tls)
        log = Path(tmp) / "cluster.log"
        with log.open("wb") as out:
            # A session of its own: Ctrl-C reaches only the demo, which then stops the cluster.
            process = subprocess.Popen(
                [sys.executable, "-m", "csbs.cluster", "--config", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_ready(load_cluster_config(path), process, log)
            yield path
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
