"""The child processes of a csbs-sim cluster: a region node or the coordinator started with
its config, waited on through the standard health service, paused, resumed and stopped (SIGTERM,
then SIGKILL). `csbs-cluster`, the console, the test harness and the benchmarks all start their
processes through this, so that they start them the same way."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csbs.config import (
    ADDRESS_FILE,
    METRICS_ADDRESS_FILE,
    METRICS_LISTEN,
    ClusterConfig,
    RegionConfig,
    resolve_address,
)
from csbs.logs import json_line
from csbs.rpc import open_channel
from csbs.tls import TlsError, ca_path, read_ca

REPO_ROOT = Path(__file__).resolve().parent.parent
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
