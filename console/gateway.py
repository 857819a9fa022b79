"""The cluster as the console reaches it. The console holds no credential of its own: every call
carries the signed-in user's token, so it can do nothing that user could not. Calls go through
the command line's clients (csbs.cli.client, over the one client core): the same deadlines,
retries and one-line refusals in product words. One channel per process, shared by every user.

Node addresses come from the cluster config (a process on port 0 publishes the address it got
beside its data), as `csbs` finds them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from console.config import ConsoleConfig
from csbs.auth import bearer
from csbs.cli.client import CoordinatorClient, Endpoint, RegionClient
from csbs.cli.errors import CliError
from csbs.config import ConfigError, RegionConfig, resolve_address
from csbs.rpc import open_channel

__all__ = ["CliError", "Gateway", "UserApi"]


class Gateway:
    """Channels to the cluster's processes, opened on first use and kept."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    @property
    def regions(self) -> tuple[RegionConfig, ...]:
        return self.config.cluster.regions

    def region_name(self, region_id: str) -> str:
        try:
            return self.config.cluster.region(region_id).display_name
        except KeyError:
            return region_id

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = open_channel(address, self.config.ca_pem)
            return channel

    def address(self, what: str, listen: str, data_dir: Path) -> str:
        try:
            return resolve_address(listen, data_dir)
        except ConfigError:
            raise CliError(f"cannot reach {what}: it has published no address") from None

    def as_user(self, token: str) -> UserApi:
        return UserApi(self, token)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


@dataclass(frozen=True)
class UserApi:
    """The cluster's user API with one user's token on every call."""

    gateway: Gateway
    token: str

    def _endpoint(self, what: str, address: str) -> Endpoint:
        channel = self.gateway.channel(address)
        return Endpoint(
            what,
            address,
            channel,
            (bearer(self.token),),
            tls=self.gateway.config.ca_pem is not None,
        )

    def region(self, region_id: str) -> RegionClient:
        try:
            region = self.gateway.config.cluster.region(region_id)
        except KeyError:
            raise CliError(f"no region {region_id!r} in the cluster") from None
        what = f"region {region_id}"
        address = self.gateway.address(what, region.listen, region.data_dir)
        return RegionClient(region_id, self._endpoint(what, address))

    def coordinator(self) -> CoordinatorClient:
        coordinator = self.gateway.config.cluster.coordinator
        what = "the coordinator"
        address = self.gateway.address(what, coordinator.listen, coordinator.data_dir)
        return CoordinatorClient(self._endpoint(what, address))
