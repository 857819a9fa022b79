"""The console as a child process of `csbs-cluster` (and of the tests): started like the other
processes, ready once it has published its address and answers its health page over HTTP."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from typing import TypeVar

from console.config import console_data_dir
from csbs.config import ClusterConfig
from csbs.processes import READY_TIMEOUT, ChildProcess, ProcessNotReady

C = TypeVar("C", bound="ConsoleProcess")
_POLL_INTERVAL = 0.05


class ConsoleProcess(ChildProcess):
    """A ChildProcess whose readiness is an HTTP health page, not the gRPC health service."""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        last = "no address published yet"
        while True:
            self.raise_if_exited("before it was ready")
            address = self._published_address()
            if address is not None:
                try:
                    with urllib.request.urlopen(f"http://{address}/healthz", timeout=1.0) as page:
                        if page.status == 200:
                            return address
                except (OSError, urllib.error.URLError) as exc:
                    last = f"http://{address}/healthz: {exc}"
            if time.monotonic() >= deadline:
                raise ProcessNotReady(self._describe(f"not ready after {timeout:.0f}s ({last})"))
            time.sleep(_POLL_INTERVAL)


def console_process(
    config: ClusterConfig,
    cls: type[C],
    python: str = sys.executable,
    tls: bool = False,
    listen: str = "127.0.0.1:0",
) -> C:
    data_dir = console_data_dir(config)
    argv = [python, "-m", "console", "--config", str(config.path), "--listen", listen]
    return cls(
        "console",
        argv + (["--tls"] if tls or config.tls else []),
        log_path=data_dir / "console.log",
        data_dir=data_dir,
        listen=listen,
        health_service="",
    )
