"""The cluster as the console reaches it. The console holds no credential of its own: every call
carries the signed-in user's token, so it can do nothing that user could not. Calls go through
the command line's clients (csbs.cli.client, over the one client core): the same deadlines,
retries and one-line refusals in product words. One channel per process, shared by every user.

Only the coordinator's address comes from the cluster config: the regions, their nodes'
addresses and the user's projects in each come from the coordinator's catalog (ListRegions),
asked once per request with the user's token (its refusal too: a page whose coordinator does
not answer waits for one call's deadline, not one per region it shows). Every call of one
console request carries that request's ID (x-request-id), so one grep of the cluster's logs
finds what a click caused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc

from console.config import ConsoleConfig
from csbs.auth import bearer
from csbs.cli.client import CoordinatorClient, Endpoint, RegionClient
from csbs.cli.errors import CliError
from csbs.config import ConfigError, resolve_address
from csbs.request_ids import REQUEST_ID_METADATA, new_request_id
from csbs.rpc import open_channel
from csbs.v1 import coordinator_pb2 as cpb

__all__ = ["CliError", "Gateway", "UserApi"]


class Gateway:
    """Channels to the cluster's processes, opened on first use and kept."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

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

    def as_user(
        self,
        token: str,
        operator_token: str = "",
        catalog: RegionCatalog | None = None,
        request_id: str = "",
    ) -> UserApi:
        return UserApi(self, token, operator_token, catalog, request_id)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


CATALOG_SECONDS = 3.0


class RegionCatalog:
    """One session's last answer of ListRegions, kept a few seconds: a page that refreshes
    itself every half second does not ask every region each time. Any form the user posts
    clears it (a change they make shows at once)."""

    def __init__(self, seconds: float = CATALOG_SECONDS) -> None:
        self._seconds = seconds
        self._regions: list[cpb.Region] | None = None
        self._at = 0.0

    def get(self) -> list[cpb.Region] | None:
        if self._regions is not None and time.monotonic() - self._at <= self._seconds:
            return self._regions
        return None

    def put(self, regions: list[cpb.Region]) -> None:
        self._regions, self._at = regions, time.monotonic()

    def clear(self) -> None:
        self._regions = None


class UserApi:
    """The cluster's user API with one user's token on every call (one page's worth: the
    regions are asked once)."""

    def __init__(
        self,
        gateway: Gateway,
        token: str,
        operator_token: str = "",
        catalog: RegionCatalog | None = None,
        request_id: str = "",
    ) -> None:
        self.gateway = gateway
        self.request_id = request_id or new_request_id()
        self._catalog = catalog if catalog is not None else RegionCatalog(seconds=0.0)
        self.token = token
        # The operator credential, when the user gave one: only operator calls carry it.
        self.operator_token = operator_token
        self._regions: list[cpb.Region] | None = None
        self._regions_refused: CliError | None = None

    def regions(self) -> list[cpb.Region]:
        """Every region, with the user's projects there and its node's address (ListRegions).
        Asked once: a refusal is kept too, and raised again to every later caller."""
        if self._regions_refused is not None:
            raise self._regions_refused
        if self._regions is None:
            self._regions = self._catalog.get()
        if self._regions is None:
            try:
                self._regions = self.coordinator().list_regions()
            except CliError as exc:
                self._regions_refused = exc
                raise
            self._catalog.put(self._regions)
        return self._regions

    def region_entry(self, region_id: str) -> cpb.Region | None:
        return next((r for r in self.regions() if r.region_id == region_id), None)

    def _endpoint(self, what: str, address: str) -> Endpoint:
        channel = self.gateway.channel(address)
        traced = ((REQUEST_ID_METADATA, self.request_id),)
        operator = (bearer(self.operator_token), *traced) if self.operator_token else traced
        return Endpoint(
            what,
            address,
            channel,
            (bearer(self.token), *traced),
            operator_metadata=operator,
            tls=self.gateway.config.ca_pem is not None,
        )

    def region(self, region_id: str) -> RegionClient:
        """The client of a region's node, at the address the catalog gives."""
        region = self.region_entry(region_id)
        if region is None:
            raise CliError(f"no region {region_id!r} in the cluster")
        what = f"region {region_id}"
        if not region.node_address:
            raise CliError(f"cannot reach {what}: {region.unreachable_reason or 'not running'}")
        return RegionClient(region_id, self._endpoint(what, region.node_address))

    def endpoint(self, region_id: str) -> Endpoint:
        """The raw endpoint of a region's node (for its operator calls)."""
        return self.region(region_id).endpoint

    def coordinator(self) -> CoordinatorClient:
        coordinator = self.gateway.config.cluster.coordinator
        what = "the coordinator"
        address = self.gateway.address(what, coordinator.listen, coordinator.data_dir)
        return CoordinatorClient(self._endpoint(what, address))
