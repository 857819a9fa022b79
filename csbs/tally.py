"""What the domain counts for the process's metrics (issue 14): bytes read and stored by
backups, bytes sent and received by replications, jobs ended. Plain Python, no Prometheus: the
domain adds to a `Tally`, and csbs.metrics reads it when it is scraped. A count is added once
per backup, batch or attempt, never per chunk."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# What is counted (csbs.metrics gives each its metric name and meaning).
BACKUP_BYTES_READ = "backup_bytes_read"
BACKUP_BYTES_STORED = "backup_bytes_stored"
BACKUPS_ENDED = "backups_ended"  # label status
REPLICATION_BYTES_SENT = "replication_bytes_sent"
REPLICATION_BYTES_RECEIVED = "replication_bytes_received"
REPLICATION_BYTES_STORED = "replication_bytes_stored"
REPLICATION_JOBS_ENDED = "replication_jobs_ended"  # label status

# What each kind of process counts.
NODE_COUNTS = (
    BACKUP_BYTES_READ,
    BACKUP_BYTES_STORED,
    BACKUPS_ENDED,
    REPLICATION_BYTES_RECEIVED,
    REPLICATION_BYTES_STORED,
)
COORDINATOR_COUNTS = (REPLICATION_BYTES_SENT, REPLICATION_JOBS_ENDED)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Figure:
    """A gauge's value, read from the process's state when its metrics are scraped."""

    name: str  # the metric's name (csbs_...)
    meaning: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


class Tally:
    """Counters that only grow, by name and labels; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, Labels], float] = {}

    def add(self, name: str, amount: float = 1, **labels: str) -> None:
        if amount <= 0:
            return
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def counts(self) -> dict[tuple[str, Labels], float]:
        with self._lock:
            return dict(self._counts)

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counts.get((name, tuple(sorted(labels.items()))), 0)
