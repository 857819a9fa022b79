"""Starts the console: `csbs-console --config cluster.toml [--listen HOST:PORT]`. It binds
(127.0.0.1:0 by default: a free port), publishes the address it got in
`<data_dir>/console/address` as the other processes do, prints it, and serves until SIGTERM or
Ctrl-C."""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn

from console.app import build_app
from console.config import DEFAULT_LISTEN, ConsoleConfig
from csbs.config import SHIPPED_CONFIG, ConfigError, load_cluster_config, write_address_file
from csbs.tls import TlsError


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {listen!r}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), int(port)))
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csbs-console", description=__doc__)
    parser.add_argument("--config", default=str(SHIPPED_CONFIG), help="cluster config file")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (port 0: any free)")
    parser.add_argument("--tls", action="store_true", help="the cluster runs TLS (as cluster.tls)")
    args = parser.parse_args(argv)
    try:
        config = ConsoleConfig.from_cluster(load_cluster_config(args.config), args.listen, args.tls)
        sock = _bind(config.listen)
    except (ConfigError, TlsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    address = f"{host}:{port}"
    write_address_file(config.data_dir, address)
    print(f"console serving on http://{address}", flush=True)
    server = uvicorn.Server(uvicorn.Config(build_app(config), log_level="warning"))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
