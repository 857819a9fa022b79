"""The console's config: where it listens, and the cluster it shows (its config file gives the
addresses of the region nodes and the coordinator, and whether they speak TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csbs.config import ClusterConfig
from csbs.tls import ca_path, read_ca

DEFAULT_LISTEN = "127.0.0.1:0"


@dataclass(frozen=True)
class ConsoleConfig:
    listen: str
    cluster: ClusterConfig
    # The CA that signed the cluster's certificates (None: the cluster runs plaintext).
    ca_pem: bytes | None = None

    @property
    def data_dir(self) -> Path:
        """Where the console publishes the address it bound (`<data_dir>/address`)."""
        return console_data_dir(self.cluster)

    @classmethod
    def from_cluster(cls, cluster: ClusterConfig, listen: str, tls: bool) -> ConsoleConfig:
        ca = read_ca(ca_path(cluster.tls_dir)) if tls or cluster.tls else None
        return cls(listen=listen, cluster=cluster, ca_pem=ca)


def console_data_dir(cluster: ClusterConfig) -> Path:
    return cluster.data_dir / "console"
