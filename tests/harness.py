"""The harness integration tests and benchmarks use to run a real cluster: a config written into a
temp dir (every process on port 0), region node and coordinator processes started the way
`csbs-cluster` starts them, channels to them, and the faults a test injects (kill, pause,
restart). Every wait is bounded, and a cluster always stops its children."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from csbs.auth import Metadata, bearer, with_metadata
from csbs.config import ClusterConfig, load_cluster_config
from csbs.credentials import ClusterSecrets, ensure_cluster_secrets
from csbs.processes import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    ChildProcess,
    check_health,
    coordinator_available,
    coordinator_process,
    region_node_process,
    stop_all,
)
from csbs.rpc import open_channel

REPO_ROOT = Path(__file__).resolve().parent.parent

# The accounts of csbs/cluster.toml, with tokens the tests know (a real cluster issues its
# own at first start and keeps only their hashes).
DEFAULT_ACCOUNT = "default"
SECOND_ACCOUNT = "acme"
ACCOUNT_TOKENS = {
    DEFAULT_ACCOUNT: "csbs_test_token_of_the_default_account",
    SECOND_ACCOUNT: "csbs_test_token_of_the_acme_account_0",
}
OPERATOR_TOKEN = "csbsop_test_operator_credential_00"
# Services whose calls need another credential than an account's token.
INTERNAL_SERVICE = "/csbs.v1.RegionNodeInternal/"
ADMIN_SERVICES = (
    "/csbs.v1.RegionNodeAdmin/",
    "/csbs.v1.CoordinatorAdmin/",
    "/csbs.v1.FaultInjection/",
)


def stop_cleanly_on_sigterm() -> None:
    """Makes SIGTERM end this program as Ctrl-C would, through every `finally` and `with`:
    a soak stopped by `kill` (or `timeout`) stops its cluster and unmounts its tmpfs
    instead of leaving them behind."""

    def leave(signum: int, _frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def _projects(region_id: str, name: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    """The default account's main project in a region, `extra` ones, the second account's."""
    return [
        {"id": f"{region_id}_default", "name": name, "account": DEFAULT_ACCOUNT, "main": True},
        *extra,
        {
            "id": f"{region_id}_acme",
            "name": f"{name}_acme",
            "account": SECOND_ACCOUNT,
            "main": True,
        },
    ]


def _with_every_account(region: dict[str, Any]) -> dict[str, Any]:
    """The region with a main project for each account that has none there (P3: every account
    has its main project in every region)."""
    projects = list(region.get("projects", []))
    for account in ACCOUNT_TOKENS:
        if not any(p.get("account") == account and p.get("main") for p in projects):
            project_id = f"{region['id']}_{account}"
            projects.append(
                {"id": project_id, "name": project_id, "account": account, "main": True}
            )
    return {**region, "projects": projects}


# The regions of csbs/cluster.toml, on port 0: two accept replication and one does not (R5);
# every account has a main project in each; cn-east-3 holds a second project of the default
# account besides its main one (P3).
DEFAULT_REGIONS: tuple[dict[str, Any], ...] = (
    {
        "id": "cn-north-4",
        "name": "CN North-Beijing4",
        "accepts_replication": True,
        "projects": _projects("cn-north-4", "cn-north-4"),
    },
    {
        "id": "cn-east-3",
        "name": "CN East-Shanghai1",
        "accepts_replication": True,
        "projects": _projects(
            "cn-east-3",
            "cn-east-3",
            {"id": "cn-east-3_dr", "name": "cn-east-3_dr", "account": "default", "main": False},
        ),
    },
    {
        "id": "cn-south-1",
        "name": "CN South-Guangzhou",
        "accepts_replication": False,
        "projects": _projects("cn-south-1", "cn-south-1"),
    },
)
ANY_PORT = "127.0.0.1:0"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # finite floats only: TOML has no nan/inf spelled as Python does
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_cluster_config(
    tmp_dir: Path,
    regions: Sequence[dict[str, Any]] | None = None,
    chunk_size: int = 1 << 20,
    simulated_clock: bool = False,
    coordinator: dict[str, Any] | None = None,
    tls: bool = False,
    faults: dict[str, Any] | None = None,
) -> Path:
    """Writes `<tmp_dir>/cluster.toml` with data under `<tmp_dir>/data` and every process on
    127.0.0.1:0, and returns its path. `regions` take the config file's keys (id, name,
    accepts_replication, projects); any `listen` in them is replaced by port 0, and an account
    without a main project in a region gets one. `coordinator`
    takes keys of the `[coordinator]` table (retry_budget_seconds, cleanup_interval_seconds);
    its `listen` too is always port 0. Both accounts (and the operator) get the tokens in
    ACCOUNT_TOKENS (OPERATOR_TOKEN); a region's projects name their account. `tls` runs every
    channel with TLS. `faults` takes the `[faults]` section's keys: `outages` (region IDs) and
    `rules` (dicts of a `[[faults.rules]]` table's keys)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[cluster]",
        f"data_dir = {_toml_value(str(tmp_dir / 'data'))}",
        f"chunk_size = {chunk_size}",
        f"clock = {_toml_value('simulated' if simulated_clock else 'wall')}",
        f"tls = {_toml_value(tls)}",
        "",
        "[coordinator]",
        *(
            f"{key} = {_toml_value(value)}"
            for key, value in {**(coordinator or {}), "listen": ANY_PORT}.items()
        ),
        "",
        "[operator]",
        f"tokens = {_toml_value([OPERATOR_TOKEN])}",
    ]
    for account_id, token in ACCOUNT_TOKENS.items():
        lines += ["", "[[accounts]]", f"id = {_toml_value(account_id)}"]
        lines.append(f"tokens = {_toml_value([token])}")
    for region in DEFAULT_REGIONS if regions is None else regions:
        lines += ["", "[[regions]]"]
        for key, value in {**_with_every_account(region), "listen": ANY_PORT}.items():
            lines.append(f"{key} = {_toml_value(value)}")
    if faults:
        lines += ["", "[faults]"]
        if "outages" in faults:
            lines.append(f"outages = {_toml_value(faults['outages'])}")
        for rule in faults.get("rules", []):
            lines += ["", "[[faults.rules]]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in rule.items()]
    path = tmp_dir / "cluster.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ProcessHandle(ChildProcess):
    """A cluster process under test: what csbs-cluster does with it, plus the faults a test
    injects and the measurements a benchmark takes."""

    _peak_rss_mb: float | None = None

    def pause(self) -> None:
        """SIGSTOP: the process stays alive but answers nothing, as if hung or cut off."""
        self._send(signal.SIGSTOP)

    def resume(self) -> None:
        self._send(signal.SIGCONT)

    def restart(self, timeout: float = READY_TIMEOUT) -> str:
        """Stops the process if it runs, starts it again on the same data dir, waits until it is
        ready and returns its (new) address."""
        self.stop()
        self.start()
        return self.wait_ready(timeout)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory (VmHWM) in MiB; after it stopped, the last value
        read before it was stopped."""
        self._remember_peak_rss()
        if self._peak_rss_mb is None:
            raise RuntimeError(f"{self.name}: no memory figure (never ran)")
        return self._peak_rss_mb

    def _on_stopping(self) -> None:
        self._remember_peak_rss()

    def _remember_peak_rss(self) -> None:
        if not self.running:
            return
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self._peak_rss_mb = int(line.split()[1]) / 1024
                return

    def _send(self, signum: int) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        self._signal(signum)


class Cluster:
    """The processes of one cluster config. Nodes are started by `start()`; the coordinator
    only when asked. Use as a context manager so that every child is always stopped."""

    def __init__(
        self,
        config_path: Path,
        *,
        ready_timeout: float = READY_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.config: ClusterConfig = load_cluster_config(config_path)
        # The secrets file, made before any process starts: the tests need the cluster
        # credential to call the nodes' internal services directly.
        self.secrets: ClusterSecrets = ensure_cluster_secrets(self.config)[0]
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._nodes = {
            region.region_id: region_node_process(self.config, region, ProcessHandle)
            for region in self.config.regions
        }
        self._coordinator = coordinator_process(self.config, ProcessHandle)
        self._channels: dict[str, tuple[str, grpc.Channel]] = {}
        # (process, account) -> (the plain channel it wraps, the channel with credentials)
        self._authorized: dict[tuple[str, str], tuple[grpc.Channel, grpc.Channel]] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def region_ids(self) -> list[str]:
        return list(self._nodes)

    def start(self, coordinator: bool = False) -> None:
        """Starts every region node (side by side) and waits until each serves; then the
        coordinator if asked. If anything fails to start, everything is stopped again."""
        if coordinator and not coordinator_available():
            raise RuntimeError("the coordinator package has no __main__ yet")
        try:
            for node in self._nodes.values():
                node.start()
            for node in self._nodes.values():
                node.wait_ready(self.ready_timeout)
            if coordinator:
                self._coordinator.start()
                self._coordinator.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise

    def node(self, region_id: str) -> ProcessHandle:
        try:
            return self._nodes[region_id]
        except KeyError:
            raise KeyError(f"no region {region_id!r} in {self.config.path}") from None

    @property
    def nodes(self) -> list[ProcessHandle]:
        return list(self._nodes.values())

    @property
    def coordinator(self) -> ProcessHandle:
        return self._coordinator

    def channel(self, region_id: str, account: str | None = DEFAULT_ACCOUNT) -> grpc.Channel:
        """A channel to a region node, reused until the node comes back on another address.
        Its calls carry `account`'s token on user services, the cluster credential on the
        internal service and the operator credential on the admin service, unless a call
        sends its own `authorization`; with `account=None` they carry nothing."""
        return self._authorized_channel(region_id, self.node(region_id), account)

    def coordinator_channel(self, account: str | None = DEFAULT_ACCOUNT) -> grpc.Channel:
        return self._authorized_channel("coordinator", self._coordinator, account)

    def credentials_for(self, account: str) -> Metadata:
        return [bearer(ACCOUNT_TOKENS[account])]

    def _metadata_for(self, account: str, method: str) -> Metadata:
        if method.startswith(INTERNAL_SERVICE):
            return [bearer(self.secrets.cluster_credential)]
        if method.startswith(ADMIN_SERVICES):
            return [bearer(OPERATOR_TOKEN)]
        return self.credentials_for(account)

    def _authorized_channel(
        self, key: str, process: ProcessHandle, account: str | None
    ) -> grpc.Channel:
        channel = self._channel(key, process)
        if account is None:
            return channel
        cached = self._authorized.get((key, account))
        # The channel with credentials wraps the plain one: made again when that one changes.
        if cached is None or cached[0] is not channel:
            wrapped = with_metadata(channel, lambda method: self._metadata_for(account, method))
            cached = self._authorized[(key, account)] = (channel, wrapped)
        return cached[1]

    def health(self, region_id: str, service: str = "", timeout: float = 2.0) -> str:
        """The health status a region node reports (SERVING, NOT_SERVING) or the failed call's
        code (UNAVAILABLE, DEADLINE_EXCEEDED)."""
        return check_health(self.channel(region_id), service, timeout)

    def stop(self) -> None:
        """Stops every child that runs (coordinator included) and closes every channel."""
        for _, channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._authorized.clear()
        stop_all([self._coordinator, *self._nodes.values()], self.stop_timeout)

    def _channel(self, key: str, process: ProcessHandle) -> grpc.Channel:
        address = process.address
        cached = self._channels.get(key)
        if cached is not None:
            if cached[0] == address:
                return cached[1]
            cached[1].close()
        channel = open_channel(address, process.ca_pem())
        self._channels[key] = (address, channel)
        return channel
