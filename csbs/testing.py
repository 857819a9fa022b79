"""A whole csbs-sim cluster started for tests of your own tools, as testcontainers starts a
database: `start_cluster()` runs a fresh copy of a cluster config (the shipped one by default)
with every process on an ephemeral port of 127.0.0.1 and its data in a temp dir, waits until
every process serves, and gives a `LocalCluster`: the coordinator's and every node's address,
the accounts' API tokens, the operator credential and clients (csbs.client). When the block ends,
every process is stopped, a failing block too, and the temp dir removed.

The pytest plugin (csbs.pytest_plugin) gives the same as the `csbs_cluster` fixture. The cluster
is run the way `csbs demo --fresh-cluster` runs it (csbs.cli.fresh_cluster: `csbs-cluster` as a
child process)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from csbs.cli.fresh_cluster import fresh_cluster
from csbs.client import Client
from csbs.config import SHIPPED_CONFIG, ClusterConfig, load_cluster_config, resolve_address
from csbs.credentials import OPERATOR_PREFIX, new_token
from csbs.tls import ca_path

CLOCKS = ("wall", "simulated")


class LocalCluster:
    """A running cluster started by `start_cluster`."""

    def __init__(self, config: ClusterConfig, tokens: dict[str, str], operator_token: str):
        self.config = config
        # The fresh copy of the config the processes run with (its data dir is the temp dir).
        self.config_path: Path = config.path
        self.coordinator_address = resolve_address(
            config.coordinator.listen, config.coordinator.data_dir
        )
        # Region ID -> the address of its node, in the config's order.
        self.region_addresses = {
            r.region_id: resolve_address(r.listen, r.data_dir) for r in config.regions
        }
        self.tokens = dict(tokens)  # account ID -> its API token
        self.operator_token = operator_token
        self.clock = "simulated" if config.simulated_clock else "wall"
        # With TLS: the cluster's CA certificate, to verify its processes with.
        self.ca: Path | None = ca_path(config.tls_dir) if config.tls else None
        self._clients: list[Client] = []

    @property
    def region_ids(self) -> list[str]:
        return list(self.region_addresses)

    @property
    def default_account(self) -> str:
        """The first account of the config (`default` in the shipped one)."""
        return self.config.default_account.account_id

    def client(self, account: str | None = None) -> Client:
        """A client acting as `account` (default: the first account), holding the operator
        credential too; closed when the cluster stops."""
        account = account or self.default_account
        if account not in self.tokens:
            raise KeyError(
                f"no account {account!r} in the cluster (it has {', '.join(self.tokens)})"
            )
        client = Client(
            self.config_path, token=self.tokens[account], operator_token=self.operator_token
        )
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


@contextlib.contextmanager
def start_cluster(
    config: Path | str | None = None, *, clock: str | None = None, tls: bool = False
) -> Iterator[LocalCluster]:
    """Runs a fresh copy of `config`'s cluster (default: the shipped one) until the block ends.
    `clock`: "wall" or "simulated" (default: the config's); `tls`: TLS on every channel."""
    if clock is not None and clock not in CLOCKS:
        raise ValueError(f"clock: expected one of {', '.join(CLOCKS)}, got {clock!r}")
    base = load_cluster_config(config if config is not None else SHIPPED_CONFIG)
    tokens = {account.account_id: new_token() for account in base.accounts}
    operator_token = new_token(OPERATOR_PREFIX)
    with fresh_cluster(
        base, tokens, tls, operator_token=operator_token, clock=clock, prefix="csbs-cluster-"
    ) as path:
        cluster = LocalCluster(load_cluster_config(path), tokens, operator_token)
        try:
            yield cluster
        finally:
            cluster.close_clients()
