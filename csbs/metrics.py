"""A process's Prometheus metrics (issue 14), served over HTTP on a port of its own
(`metrics_listen`, published in the data dir like the gRPC address). Each process has its own
registry, never the global one:
- the gRPC calls it served (csbs.observed_calls counts and times them);
- what its domain counted (csbs.tally), read at scrape time;
- figures read from its state at scrape time (csbs.tally.Figure: chunk store bytes, jobs by
  status).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from csbs import tally
from csbs.tally import Figure

log = logging.getLogger(__name__)

# Metric name (without _total) and meaning of each count of csbs.tally, and its labels.
COUNTED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    tally.BACKUP_BYTES_READ: (
        "csbs_backup_bytes_read",
        "Bytes read from server disks by backups that completed",
        (),
    ),
    tally.BACKUP_BYTES_STORED: (
        "csbs_backup_bytes_stored",
        "Bytes that completed backups stored anew in the chunk store (deduplicated)",
        (),
    ),
    tally.BACKUPS_ENDED: ("csbs_backups_ended", "Backups ended, by status", ("status",)),
    tally.REPLICATION_BYTES_SENT: (
        "csbs_replication_bytes_sent",
        "Chunk bytes the coordinator relayed from source to target regions",
        (),
    ),
    tally.REPLICATION_BYTES_RECEIVED: (
        "csbs_replication_bytes_received",
        "Chunk bytes this region received for replicas (stored anew or already held)",
        (),
    ),
    tally.REPLICATION_BYTES_STORED: (
        "csbs_replication_bytes_stored",
        "Bytes replicas stored anew in this region's chunk store",
        (),
    ),
    tally.REPLICATION_JOBS_ENDED: (
        "csbs_replication_jobs_ended",
        "Replication jobs ended in this run of the coordinator, by status",
        ("status",),
    ),
}
# Call latency buckets in seconds: unary calls take milliseconds, streams up to minutes.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _TallyCollector(Collector):
    def __init__(self, counts: tally.Tally, keys: Iterable[str]) -> None:
        self._tally = counts
        self._keys = tuple(keys)

    def collect(self) -> Iterator[Metric]:
        counts = self._tally.counts()
        for key in self._keys:
            name, meaning, label_names = COUNTED[key]
            family = CounterMetricFamily(name, meaning, labels=label_names)
            if not label_names:
                family.add_metric([], counts.get((key, ()), 0))
            for (counted, labels), value in sorted(counts.items()):
                if counted == key and label_names:
                    family.add_metric([dict(labels).get(n, "") for n in label_names], value)
            yield family


class _FigureCollector(Collector):
    def __init__(self, figures: Callable[[], Iterable[Figure]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        try:
            figures = list(self._figures())
        except Exception:  # a scrape while the process stops: the other metrics still answer
            log.exception("reading the figures for a metrics scrape failed")
            return
        families: dict[str, GaugeMetricFamily] = {}
        for figure in figures:
            family = families.get(figure.name)
            if family is None:
                family = families[figure.name] = GaugeMetricFamily(
                    figure.name, figure.meaning, labels=list(figure.labels)
                )
            family.add_metric(list(figure.labels.values()), figure.value)
        yield from families.values()


class ProcessMetrics:
    """One process's registry and its HTTP endpoint. The process adds what its domain counts
    (`count`) and the figures it reads at scrape time (`read`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.handled = Counter(
            "csbs_grpc_server_handled",
            "gRPC calls this process served, by service, method and final status code",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.handling = Histogram(
            "csbs_grpc_server_handling_seconds",
            "Time from a gRPC call's start to its end (a stream's last message), in seconds",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self._http: WSGIServer | None = None

    def count(self, counts: tally.Tally, keys: Iterable[str]) -> None:
        """Shows the `keys` of what `counts` counts (csbs.tally.NODE_COUNTS, ...)."""
        self.registry.register(_TallyCollector(counts, keys))

    def read(self, figures: Callable[[], Iterable[Figure]]) -> None:
        self.registry.register(_FigureCollector(figures))

    def call_ended(self, service: str, method: str, code: str, seconds: float) -> None:
        self.handled.labels(service, method, code).inc()
        self.handling.labels(service, method).observe(seconds)

    def serve(self, listen: str) -> str:
        """Serves /metrics on `listen` (port 0: an ephemeral port); returns the address bound."""
        host, _, port = listen.rpartition(":")
        self._http, _thread = _start_http_server(int(port), host.strip("[]"), self.registry)
        return f"{host}:{self._http.server_address[1]}"

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def serve_metrics(metrics: ProcessMetrics, listen: str) -> str | None:
    """`metrics.serve(listen)` for a process's start: None, with the reason on stderr, when the
    address cannot be bound (a port in use), for the process to exit 2 before it starts."""
    try:
        return metrics.serve(listen)
    except OSError as exc:
        print(f"error: cannot serve metrics on {listen}: {exc.strerror or exc}", file=sys.stderr)
        return None
