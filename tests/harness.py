"""The harness integration tests and benchmarks use to run a real cluster: a config written into a
temp dir (every process on port 0), region node and coordinator processes started the way
`csbs-cluster` starts them, channels to them, and the faults a test injects (kill, pause,
restart). Every wait is bounded, and a cluster always stops its children."""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from csbs.cluster import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    ChildProcess,
    check_health,
    coordinator_available,
    coordinator_process,
    region_node_process,
    stop_all,
)
from csbs.config import ClusterConfig, load_cluster_config
from csbs.rpc import channel_options

REPO_ROOT = Path(__file__).resolve().parent.parent

# The regions of config/cluster.toml, on port 0: two accept replication and one does not (R5);
# cn-east-3 holds a second project of the default account besides its main one (P3).
DEFAULT_REGIONS: tuple[dict[str, Any], ...] = (
    {
        "id": "cn-north-4",
        "name": "CN North-Beijing4",
        "accepts_replication": True,
        "projects": [
            {"id": "cn-north-4_default", "name": "cn-north-4", "account": "default", "main": True},
        ],
    },
    {
        "id": "cn-east-3",
        "name": "CN East-Shanghai1",
        "accepts_replication": True,
        "projects": [
            {"id": "cn-east-3_default", "name": "cn-east-3", "account": "default", "main": True},
            {"id": "cn-east-3_dr", "name": "cn-east-3_dr", "account": "default", "main": False},
        ],
    },
    {
        "id": "cn-south-1",
        "name": "CN South-Guangzhou",
        "accepts_replication": False,
        "projects": [
            {"id": "cn-south-1_default", "name": "cn-south-1", "account": "default", "main": True},
        ],
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
) -> Path:
    """Writes `<tmp_dir>/cluster.toml` with data under `<tmp_dir>/data` and every process on
    127.0.0.1:0, and returns its path. `regions` take the config file's keys (id, name,
    accepts_replication, projects); any `listen` in them is replaced by port 0. `coordinator`
    takes keys of the `[coordinator]` table (retry_budget_seconds, cleanup_interval_seconds);
    its `listen` too is always port 0."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[cluster]",
        f"data_dir = {_toml_value(str(tmp_dir / 'data'))}",
        f"chunk_size = {chunk_size}",
        f"clock = {_toml_value('simulated' if simulated_clock else 'wall')}",
        "",
        "[coordinator]",
        *(
            f"{key} = {_toml_value(value)}"
            for key, value in {**(coordinator or {}), "listen": ANY_PORT}.items()
        ),
        "",
        "[[accounts]]",
        'id = "default"',
        'name = "Default account"',
    ]
    for region in DEFAULT_REGIONS if regions is None else regions:
        lines += ["", "[[regions]]"]
        for key, value in {**region, "listen": ANY_PORT}.items():
            lines.append(f"{key} = {_toml_value(value)}")
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
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._nodes = {
            region.region_id: region_node_process(self.config, region, ProcessHandle)
            for region in self.config.regions
        }
        self._coordinator = coordinator_process(self.config, ProcessHandle)
        self._channels: dict[str, tuple[str, grpc.Channel]] = {}

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

    def channel(self, region_id: str) -> grpc.Channel:
        """A channel to a region node, reused until the node comes back on another address."""
        return self._channel(region_id, self.node(region_id))

    def coordinator_channel(self) -> grpc.Channel:
        return self._channel("coordinator", self._coordinator)

    def health(self, region_id: str, service: str = "", timeout: float = 2.0) -> str:
        """The health status a region node reports (SERVING, NOT_SERVING) or the failed call's
        code (UNAVAILABLE, DEADLINE_EXCEEDED)."""
        return check_health(self.channel(region_id), service, timeout)

    def stop(self) -> None:
        """Stops every child that runs (coordinator included) and closes every channel."""
        for _, channel in self._channels.values():
            channel.close()
        self._channels.clear()
        stop_all([self._coordinator, *self._nodes.values()], self.stop_timeout)

    def _channel(self, key: str, process: ProcessHandle) -> grpc.Channel:
        address = process.address
        cached = self._channels.get(key)
        if cached is not None:
            if cached[0] == address:
                return cached[1]
            cached[1].close()
        channel = grpc.insecure_channel(address, options=channel_options())
        self._channels[key] = (address, channel)
        return channel
