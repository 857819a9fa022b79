"""Starts one region node: `csbs-region-node --config cluster.toml --region REGION`."""

from __future__ import annotations

import argparse
import logging
import sys

from csbs import logs, memory
from csbs.clock import Clock, SimulatedClock, WallClock
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
from region_node.config import NodeConfig
from region_node.node import ChunkSizeMismatch
from region_node.server import build_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csbs-region-node", description=__doc__)
    parser.add_argument("--config", default=str(SHIPPED_CONFIG), help="cluster config file")
    parser.add_argument("--region", required=True, help="the region this node serves")
    parser.add_argument("--tls", action="store_true", help="serve with TLS (as cluster.tls)")
    args = parser.parse_args(argv)
    memory.limit_arenas()  # before any thread allocates
    logs.configure(args.region)
    try:
        cluster = load_cluster_config(args.config)
        region = cluster.region(args.region)
        security = process_security(cluster, region.region_id, cluster.tls or args.tls)
    except (ConfigError, TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"error: region {args.region!r} is not in {args.config}", file=sys.stderr)
        return 2
    config = NodeConfig.from_cluster(cluster, region)
    # In simulated mode the coordinator moves this clock; it starts where it was persisted.
    clock: Clock = SimulatedClock(WallClock().now()) if cluster.simulated_clock else WallClock()
    log = logging.getLogger("region_node")
    for line in describe_issued(security.issued):
        log.warning("issued (shown once): %s", line)
    metrics = ProcessMetrics()
    # Bound before anything starts, so that a metrics port in use ends the process at once.
    metrics_address = serve_metrics(metrics, config.metrics_listen)
    if metrics_address is None:
        return 2
    try:
        server, address, node, health_servicer = build_server(
            config, clock, security.secrets, security.tls, metrics
        )
    except ChunkSizeMismatch as exc:
        metrics.close()
        print(f"error: region {config.region_id}: {exc}", file=sys.stderr)
        return 2
    server.start()
    # Published before the gRPC address, which tells that the process is ready; on a full
    # filesystem too (the reserved room is given back for it: a node restarted on a full disk
    # must come up, so that room can be made through it).
    node.parts.settle(
        lambda: write_address_file(config.data_dir, metrics_address, METRICS_ADDRESS_FILE),
        "publishing the metrics address",
    )
    node.parts.settle(
        lambda: write_address_file(config.data_dir, address), "publishing the address"
    )
    log.info(
        "region %s serving on %s%s, metrics on http://%s/metrics",
        config.region_id,
        address,
        " (TLS)" if security.tls else "",
        metrics_address,
    )

    def stop() -> None:
        metrics.close()
        node.close()

    serve_until_signal(server, health_servicer, on_stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
