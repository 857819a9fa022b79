"""Runs a whole csbs-sim cluster on one machine: one child process per region node (and the
coordinator once it exists), each waited on through the standard health service, all stopped
together on Ctrl-C or SIGTERM. The child-process handling here is also what the test harness
builds on, so that `make cluster` and the integration tests start processes the same way."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csbs.auth import bearer
from csbs.config import (
    ADDRESS_FILE,
    METRICS_ADDRESS_FILE,
    METRICS_LISTEN,
    SHIPPED_CONFIG,
    ClusterConfig,
    ConfigError,
    RegionConfig,
    load_cluster_config,
    resolve_address,
)
from csbs.credentials import ClusterSecrets, IssuedTokens, ensure_cluster_secrets
from csbs.logs import json_line
from csbs.rpc import open_channel
from csbs.tls import TlsError, ca_path, read_ca

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = SHIPPED_CONFIG
# A node is ready once its admin service serves: a region that starts out (a region outage,
# issue 13) serves only that, and its other services say NOT_SERVING until brought back.
REGION_NODE_READY_SERVICE = "csbs.v1.RegionNodeAdmin"
COORDINATOR_SERVICE = "csbs.v1.Coordinator"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 20
_RESUME_SETTLE = 0.2


class ProcessFailed(RuntimeError):
    """A child process exited, or did not become ready in time; the message names its log."""


class ProcessExited(ProcessFailed):
    pass


class ProcessNotReady(ProcessFailed):
    pass


def check_health(channel: grpc.Channel, service: str, timeout: float) -> str:
    """The serving status of `service` as the standard health service reports it (SERVING,
    NOT_SERVING, ...), or the status code of the call if it failed (UNAVAILABLE, ...)."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        return code.name if code is not None else "RPC_ERROR"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


class ChildProcess:
    """One csbs process run as a child: started with its output appended to a log file, ready
    once it has published its address and its health service says SERVING, stopped with
    SIGTERM and, if it does not go in time, SIGKILL. Every wait is bounded."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        data_dir: Path,
        listen: str,
        health_service: str,
        cwd: Path = REPO_ROOT,
        env: Mapping[str, str] | None = None,
        tls_ca: Path | None = None,
        metrics_listen: str = METRICS_LISTEN,
    ) -> None:
        self.name = name
        self.metrics_listen = metrics_listen
        # With TLS: the CA to verify the process with (made by the first process to start).
        self.tls_ca = tls_ca
        self.argv = list(argv)
        self.log_path = log_path
        self.data_dir = data_dir
        self.listen = listen
        self.health_service = health_service
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "not started" if self._popen is None else f"pid {self._popen.pid}"
        return f"<{type(self).__name__} {self.name} {state}>"

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        return self._popen

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def poll(self) -> int | None:
        """The exit code if the process has exited, else None (also None if never started)."""
        return None if self._popen is None else self._popen.poll()

    @property
    def address(self) -> str:
        """Where the process can be reached: the address it published, for port 0."""
        return resolve_address(self.listen, self.data_dir)

    @property
    def metrics_address(self) -> str:
        """Where the process serves its Prometheus metrics (HTTP): published, for port 0."""
        return resolve_address(self.metrics_listen, self.data_dir, METRICS_ADDRESS_FILE)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}/metrics"

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A stale address file from an earlier run would make waiting succeed on the old port.
        (self.data_dir / ADDRESS_FILE).unlink(missing_ok=True)
        (self.data_dir / METRICS_ADDRESS_FILE).unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            # A JSON line, as the process's own (issue 14).
            mark = json_line(self.name, "csbs.cluster", f"starting {' '.join(self.argv)}")
            log.write(f"{mark}\n".encode())
            log.flush()
            # A session of its own: Ctrl-C in a terminal reaches only the parent, which then
            # stops its children in order instead of racing them.
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Waits until the process has published its address and reports SERVING; returns the
        address. Raises ProcessExited at once if the process exits, ProcessNotReady on timeout."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        last = "no address published yet"
        channel: grpc.Channel | None = None
        channel_address = ""
        try:
            while True:
                self.raise_if_exited("before it was ready")
                address = self._published_address()
                ca = self.ca_pem()
                if address is not None and (self.tls_ca is None or ca is not None):
                    if channel is None or channel_address != address:
                        if channel is not None:
                            channel.close()
                        channel = open_channel(address, ca)
                        channel_address = address
                    remaining = max(deadline - time.monotonic(), 0.01)
                    status = check_health(channel, self.health_service, min(1.0, remaining))
                    if status == "SERVING":
                        return address
                    last = f"health of {self.health_service!r} at {address} is {status}"
                if time.monotonic() >= deadline:
                    raise ProcessNotReady(
                        self._describe(f"not ready after {timeout:.0f}s ({last})")
                    )
                time.sleep(_POLL_INTERVAL)
        finally:
            if channel is not None:
                channel.close()

    def ca_pem(self) -> bytes | None:
        """The CA certificate to verify this process with (None: plaintext, or not made yet)."""
        if self.tls_ca is None:
            return None
        try:
            return read_ca(self.tls_ca)
        except TlsError:
            return None

    def raise_if_exited(self, when: str = "unexpectedly") -> None:
        code = self.poll()
        if code is not None:
            raise ProcessExited(self._describe(f"exited {when} with code {code}"))

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if the process has not exited after `timeout` seconds. Returns
        the exit code (None if never started)."""
        if self._popen is None:
            return None
        self._terminate()
        return self._reap(time.monotonic() + timeout)

    def kill(self) -> int | None:
        """SIGKILL: the process gets no chance to clean up, as in a crash."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._on_stopping()
            self._signal(signal.SIGKILL)
        return self._popen.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this run of the process wrote to its log."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - 64 * 1024))
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _published_address(self) -> str | None:
        try:
            published = (self.data_dir / ADDRESS_FILE).read_text().strip()
        except FileNotFoundError:
            published = ""
        # Ready only once it has published the address it bound, a fixed port too: otherwise
        # another process on that port (a second cluster's, issue 14) would answer for it.
        return published or None

    def _describe(self, what: str) -> str:
        return (
            f"{self.name} {what}; log: {self.log_path}\n"
            f"--- last lines of {self.log_path.name} ---\n{self.log_tail()}"
        )

    def _on_stopping(self) -> None:
        """Called just before the process is sent SIGTERM or SIGKILL, while it still runs."""

    def _is_paused(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        # The state is the field after the parenthesised command name, which may hold spaces.
        return stat.rpartition(")")[2].split()[:1] in (["T"], ["t"])

    def _signal(self, signum: int) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._popen.pid, signum)

    def _terminate(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._on_stopping()
            if self._is_paused():
                # A paused (SIGSTOPped) process runs again first, and is given a moment to: a
                # SIGTERM sent while its threads wake may be taken by a thread other than the
                # main one that waits for it, and then go unnoticed until the SIGKILL.
                self._signal(signal.SIGCONT)
                time.sleep(_RESUME_SETTLE)
            self._signal(signal.SIGTERM)

    def _reap(self, deadline: float) -> int | None:
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self._popen.wait(timeout=STOP_TIMEOUT)


def stop_all(children: Iterable[ChildProcess], timeout: float = STOP_TIMEOUT) -> None:
    """Stops every child: SIGTERM to all at once, then SIGKILL to any still running after
    `timeout` seconds. Never raises for one child before the others have been stopped."""
    children = list(children)
    for child in children:
        child._terminate()
    deadline = time.monotonic() + timeout
    errors: list[BaseException] = []
    for child in children:
        try:
            child._reap(deadline)
        except Exception as exc:  # stop the rest first, then report
            errors.append(exc)
    if errors:
        raise errors[0]


C = TypeVar("C", bound=ChildProcess)


def region_node_process(
    config: ClusterConfig,
    region: RegionConfig,
    cls: type[C],
    python: str = sys.executable,
    tls: bool = False,
) -> C:
    """A region node's child process; with TLS when the config or `tls` asks for it."""
    tls = tls or config.tls
    argv = [python, "-m", "region_node", "--config", str(config.path), "--region", region.region_id]
    return cls(
        region.region_id,
        argv + (["--tls"] if tls else []),
        log_path=region.data_dir / "node.log",
        data_dir=region.data_dir,
        listen=region.listen,
        health_service=REGION_NODE_READY_SERVICE,
        tls_ca=ca_path(config.tls_dir) if tls else None,
        metrics_listen=region.metrics_listen,
    )


def coordinator_process(
    config: ClusterConfig, cls: type[C], python: str = sys.executable, tls: bool = False
) -> C:
    tls = tls or config.tls
    coordinator = config.coordinator
    return cls(
        "coordinator",
        [python, "-m", "coordinator", "--config", str(config.path)] + (["--tls"] if tls else []),
        log_path=coordinator.data_dir / "coordinator.log",
        data_dir=coordinator.data_dir,
        listen=coordinator.listen,
        health_service=COORDINATOR_SERVICE,
        tls_ca=ca_path(config.tls_dir) if tls else None,
        metrics_listen=coordinator.metrics_listen,
    )


def coordinator_available() -> bool:
    """Whether the coordinator can be run yet (`python -m coordinator` needs its __main__)."""
    try:
        return importlib.util.find_spec("coordinator.__main__") is not None
    except ModuleNotFoundError:
        return False


# --- the csbs-cluster command ------------------------------------------------------------------


class _StopRequested(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler."""


def _request_stop(signum: int, frame: FrameType | None) -> None:
    _ignore_stop_signals()  # a second Ctrl-C must not cut the orderly stop short
    raise _StopRequested(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _advertised_capability(node: ChildProcess, secrets: ClusterSecrets, configured: bool) -> str:
    """The replication capability the node itself advertises (R5: an operator may have changed
    it since the config was written), or the configured one if the node cannot say."""
    from csbs.v1 import region_node_pb2, region_node_pb2_grpc

    with open_channel(node.address, node.ca_pem()) as channel:
        try:
            info = region_node_pb2_grpc.RegionNodeStub(channel).GetRegionInfo(
                region_node_pb2.GetRegionInfoRequest(),
                timeout=2.0,
                metadata=[bearer(secrets.cluster_credential)],
            )
            return "yes" if info.accepts_replication else "no"
        except grpc.RpcError:
            return ("yes" if configured else "no") + " (configured)"


def _print_table(
    config: ClusterConfig,
    secrets: ClusterSecrets,
    nodes: Sequence[ChildProcess],
    coordinator: ChildProcess | None,
    console: ChildProcess | None = None,
) -> None:
    # The gRPC address stays the last column (scripts read it there).
    rows = [("REGION", "NAME", "ACCEPTS REPLICATION", "METRICS", "ADDRESS")]
    for node in nodes:
        region = config.region(node.name)
        capability = _advertised_capability(node, secrets, region.accepts_replication)
        rows.append(
            (region.region_id, region.display_name, capability, node.metrics_address, node.address)
        )
    if coordinator is not None:
        rows.append(("coordinator", "", "", coordinator.metrics_address, coordinator.address))
    if console is not None:
        rows.append(("console", "", "", "", f"http://{console.address}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    print(f"\ndata and logs under {config.data_dir} (<region>/node.log, JSON lines)")
    print("Prometheus metrics: http://<METRICS>/metrics")
    if coordinator is None:
        print("coordinator not started")
    if nodes and nodes[0].tls_ca is not None:
        print(f"TLS on every channel: clients verify with --ca {nodes[0].tls_ca}")
        print(f"  export CSBS_CA={nodes[0].tls_ca}")
    print("Ctrl-C stops the cluster.", flush=True)


def _print_issued(config: ClusterConfig, issued: IssuedTokens) -> None:
    """Shows newly issued tokens, once: the cluster keeps only their hashes."""
    if not issued.accounts and issued.operator is None:
        print(
            f"API tokens were issued at this cluster's first start (kept as hashes in "
            f"{config.secrets_path}). Lost one? Stop the cluster, delete that file and start "
            "again: every token is issued anew.\n"
        )
        return
    print("New credentials (shown this once; the cluster keeps only their hashes):")
    for account_id, token in issued.accounts.items():
        print(f"  API token of account {account_id!r}: {token}")
    if issued.operator is not None:
        print(f"  operator credential: {issued.operator}")
    default = issued.accounts.get(config.default_account.account_id)
    if default is not None:
        print(f"  export CSBS_TOKEN={default}")
    if issued.operator is not None:
        print(f"  export CSBS_OPERATOR_TOKEN={issued.operator}")
    print()


def _supervise(children: Sequence[ChildProcess]) -> int:
    """Waits until a signal arrives (raising _StopRequested) or a child dies (returns 1)."""
    while True:
        for child in children:
            try:
                child.raise_if_exited()
            except ProcessExited as exc:
                print(f"csbs-cluster: {exc}", file=sys.stderr)
                print("csbs-cluster: stopping the others", file=sys.stderr)
                return 1
        time.sleep(0.5)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="csbs-cluster",
        description="Run every region node of a cluster config (and the coordinator) as child "
        "processes until Ctrl-C.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cluster TOML file")
    parser.add_argument(
        "--coordinator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start the coordinator too (default: if the coordinator package can be run)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every channel (a local CA and per-process certificates, made at first "
        "start), as cluster.tls = true in the config",
    )
    parser.add_argument(
        "--console",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the console too, the cluster in a browser (default: yes)",
    )
    parser.add_argument(
        "--console-listen", default="127.0.0.1:0", metavar="HOST:PORT", help="the console's address"
    )
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT, metavar="SECONDS")
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, metavar="SECONDS")
    parser.add_argument(
        "--stop-when-stdin-closes",
        action="store_true",
        help="stop the cluster when standard input ends: a program that starts the cluster "
        "with a pipe as its stdin is sure it stops when that program ends, even killed",
    )
    return parser.parse_args(argv)


def _stop_when_stdin_closes() -> None:
    """Asks this process to stop (SIGTERM) once standard input reaches its end."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def addresses_in_use(config: ClusterConfig) -> list[str]:
    """The fixed listen addresses of the config that something already listens on."""
    fixed = [(f"region {r.region_id}", r.listen) for r in config.regions]
    fixed.append(("the coordinator", config.coordinator.listen))
    fixed += [(f"region {r.region_id}'s metrics", r.metrics_listen) for r in config.regions]
    fixed.append(("the coordinator's metrics", config.coordinator.metrics_listen))
    taken = []
    for what, listen in fixed:
        host, _, port = listen.rpartition(":")
        if port == "0":
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # As gRPC binds: a port left in TIME_WAIT is free, one a process listens on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]"), int(port)))
            except OSError:
                taken.append(f"{listen} ({what})")
    return taken


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = load_cluster_config(args.config)
        # Before anything is issued or printed (issue 14): a second cluster on the same ports.
        taken = addresses_in_use(config)
        if taken:
            raise ConfigError(
                f"{', '.join(taken)} already in use: is another cluster running? Stop it, or "
                "give this config other ports (port 0 takes a free one)"
            )
        secrets, issued = ensure_cluster_secrets(config)
    except ConfigError as exc:
        print(f"csbs-cluster: {exc}", file=sys.stderr)
        return 2
    with_coordinator = coordinator_available() if args.coordinator is None else args.coordinator
    if with_coordinator and not coordinator_available():
        print("csbs-cluster: the coordinator package has no __main__ yet", file=sys.stderr)
        return 2
    nodes = [
        region_node_process(config, region, ChildProcess, tls=args.tls) for region in config.regions
    ]
    coordinator = (
        coordinator_process(config, ChildProcess, tls=args.tls) if with_coordinator else None
    )
    console = None
    if args.console and coordinator is not None:
        from console.process import ConsoleProcess, console_process  # it builds on this module

        console = console_process(config, ConsoleProcess, tls=args.tls, listen=args.console_listen)
    children = [*nodes, *(c for c in (coordinator, console) if c is not None)]
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)
        if args.stop_when_stdin_closes:
            _stop_when_stdin_closes()
        # The nodes start side by side; the coordinator, which calls them, once they serve.
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(args.ready_timeout)
        if coordinator is not None:
            coordinator.start()
            coordinator.wait_ready(args.ready_timeout)
        if console is not None:
            console.start()
            console.wait_ready(args.ready_timeout)
        _print_issued(config, issued)
        _print_table(config, secrets, nodes, coordinator, console)
        return _supervise(children)
    except _StopRequested as exc:
        print(f"\ncsbs-cluster: {exc}, stopping", file=sys.stderr)
        return 0
    except ProcessFailed as exc:
        print(f"csbs-cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        _ignore_stop_signals()
        stop_all(children, args.stop_timeout)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
