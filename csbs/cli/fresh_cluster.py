"""A fresh cluster for `csbs demo --fresh-cluster` (`make demo`) and the pytest plugin's
`csbs_cluster` (csbs.testing): a copy of a config, every process on an ephemeral port with its
data in a temp dir, run by `csbs-cluster` in the background and stopped (SIGTERM, which stops
its children in order) when the block ends. Ephemeral ports, so that it never collides with a
`make cluster` that runs."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from csbs.cli.errors import Unreachable
from csbs.config import ADDRESS_FILE, ClusterConfig, load_cluster_config
from csbs.processes import COORDINATOR_SERVICE, REGION_NODE_READY_SERVICE, check_health
from csbs.rpc import open_channel
from csbs.tls import TlsError, ca_path, read_ca

ANY_PORT = "127.0.0.1:0"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLUSTER_STOP_TIMEOUT = 20.0  # the cluster's own wait for its children: well within
POLL = 0.1


class ClusterDidNotStart(Unreachable):
    """The demo's own cluster exited or was not ready in time (exit 3, as when unreachable)."""


def _ephemeral(table: dict[str, Any]) -> None:
    """Every listen address in `table` and the tables under it (`listen`, `*_listen`) on port
    0 of the loopback: a fresh cluster never collides with one that runs."""
    for key, value in table.items():
        if isinstance(value, dict):
            _ephemeral(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _ephemeral(item)
        elif key == "listen" or key.endswith("_listen"):
            table[key] = ANY_PORT


def write_fresh_config(
    base: ClusterConfig,
    directory: Path,
    tokens: Mapping[str, str],
    tls: bool = False,
    *,
    operator_token: str | None = None,
    clock: str | None = None,
) -> Path:
    """`base`'s config file as it is (regions, accounts, links, faults, capacity, quotas)
    with every process on an ephemeral port and its data under `directory`, each account with
    the token `tokens` gives it (else one issued at first start), the operator with
    `operator_token` (else one issued), TLS on every channel if `base` or `tls` asks for it, and
    the clock `clock` ("wall" or "simulated") if given."""
    raw = tomllib.loads(base.path.read_text(encoding="utf-8"))
    cluster = raw.setdefault("cluster", {})
    cluster["data_dir"] = str(directory / "data")
    cluster["tls"] = tls or base.tls
    if clock is not None:
        cluster["clock"] = clock
    _ephemeral(raw)
    raw.setdefault("coordinator", {})["listen"] = ANY_PORT
    accounts = raw.setdefault("accounts", [{"id": base.default_account.account_id}])
    for account in accounts:
        if account.get("id") in tokens:
            account["tokens"] = [tokens[account["id"]]]
    if operator_token is not None:
        raw.setdefault("operator", {})["tokens"] = [operator_token]
    path = directory / "cluster.toml"
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
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
    base: ClusterConfig,
    tokens: Mapping[str, str],
    tls: bool = False,
    *,
    operator_token: str | None = None,
    clock: str | None = None,
    prefix: str = "csbs-demo-cluster-",
) -> Iterator[Path]:
    """Runs a fresh copy of `base`'s cluster until the block ends; yields its config's path.
    The temp dir is the user's alone (0700), as the tokens in its config are secrets; it is
    removed after every process has stopped."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = write_fresh_config(
            base, Path(tmp), tokens, tls, operator_token=operator_token, clock=clock
        )
        log = Path(tmp) / "cluster.log"
        with log.open("wb") as out:
            # A session of its own: Ctrl-C reaches only the demo, which then stops the cluster.
            # No console: the demo and the csbs_cluster fixture speak gRPC only.
            # Its stdin is a pipe this process holds: when this process ends, killed too, the
            # pipe closes and the cluster stops itself. It stops its children within
            # CLUSTER_STOP_TIMEOUT, before this process gives up waiting (STOP_TIMEOUT).
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "csbs.cluster",
                    "--config",
                    str(path),
                    "--no-console",
                    "--stop-when-stdin-closes",
                    "--stop-timeout",
                    f"{CLUSTER_STOP_TIMEOUT:g}",
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_ready(load_cluster_config(path), process, log)
            yield path
        finally:
            process.terminate()
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
