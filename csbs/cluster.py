"""`csbs-cluster`: runs a whole csbs-sim cluster on one machine: one child process per region
node, the coordinator and the console (csbs/processes.py starts and stops each), each waited on
through the standard health service, all stopped together on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import grpc

from csbs.auth import bearer
from csbs.config import (
    SHIPPED_CONFIG,
    ClusterConfig,
    ConfigError,
    load_cluster_config,
)
from csbs.credentials import ClusterSecrets, IssuedTokens, ensure_cluster_secrets
from csbs.processes import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    ChildProcess,
    ProcessExited,
    ProcessFailed,
    coordinator_available,
    coordinator_process,
    region_node_process,
    stop_all,
)
from csbs.rpc import open_channel

DEFAULT_CONFIG = SHIPPED_CONFIG


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
