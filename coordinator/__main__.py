"""Starts the coordinator: `csbs-coordinator --config cluster.toml`."""

from __future__ import annotations

import argparse
import logging
import sys

from coordinator.config import CoordinatorConfig
from coordinator.server import build_server
from csbs import logs, memory
from csbs.config import (
    METRICS_ADDRESS_FILE,
    SHIPPED_CONFIG,
    ConfigError,
    load_cluster_config,
    write_address_file,
)
from csbs.credentials import describe_issued, process_security
from csbs.metrics import ProcessMetrics, serve_metrics
from csbs.rpc import serve_until_signal
from csbs.tls import TlsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csbs-coordinator", description=__doc__)
    parser.add_argument("--config", default=str(SHIPPED_CONFIG), help="cluster config file")
    parser.add_argument("--tls", action="store_true", help="serve with TLS (as cluster.tls)")
    args = parser.parse_args(argv)
    memory.limit_arenas()  # before any thread allocates
    logs.configure("coordinator")
    try:
        cluster = load_cluster_config(args.config)
        security = process_security(cluster, "coordinator", cluster.tls or args.tls)
    except (ConfigError, TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("coordinator")
    for line in describe_issued(security.issued):
        log.warning("issued (shown once): %s", line)
    config = CoordinatorConfig.from_cluster(cluster, security.secrets, security.tls)
    metrics = ProcessMetrics()
    # Bound before anything starts, so that a metrics port in use ends the process at once.
    metrics_address = serve_metrics(metrics, config.metrics_listen)
    if metrics_address is None:
        return 2
    server, address, domain, health_servicer = build_server(config, metrics)
    server.start()
    domain.policies.start()
    # Published before the gRPC address, which tells that the process is ready.
    write_address_file(config.data_dir, metrics_address, METRICS_ADDRESS_FILE)
    write_address_file(config.data_dir, address)
    log.info(
        "coordinator serving on %s%s, metrics on http://%s/metrics",
        address,
        " (TLS)" if security.tls else "",
        metrics_address,
    )

    def stop() -> None:
        metrics.close()
        domain.close()

    serve_until_signal(server, health_servicer, on_stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
