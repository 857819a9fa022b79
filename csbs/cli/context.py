"""What one csbs command runs with: the options the user gave (on the command line or through
CSBS_* variables), resolved against the cluster config into the region and project it acts in
and the addresses of the region nodes and the coordinator; channels are opened on first use and
closed when the command ends."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from csbs.auth import bearer
from csbs.cli.client import CoordinatorClient, Endpoint, RegionClient
from csbs.cli.errors import START_HINT, Unreachable, UsageError
from csbs.cli.output import Printer
from csbs.cluster import DEFAULT_CONFIG
from csbs.config import ClusterConfig, ConfigError, load_cluster_config, resolve_address
from csbs.request_ids import REQUEST_ID_METADATA
from csbs.rpc import open_channel
from csbs.tls import TlsError, ca_path, read_ca


@dataclass(frozen=True)
class Options:
    """The options every command takes; None (or empty) means "not given here"."""

    config: Path | None = None
    region: str | None = None
    project: str | None = None
    token: str | None = None
    operator_token: str | None = None
    ca: Path | None = None
    addresses: tuple[str, ...] = ()
    coordinator: str | None = None
    json: bool = False
    # Sent as x-request-id with every call (the command line gives one per command); None:
    # none is sent, and each call gets its own from the process that serves it.
    request_id: str | None = None

    def over(self, base: Options) -> Options:
        """These options where they were given, else `base`'s (a command's own options over
        the ones given before the command's name)."""
        merged = {
            f.name: getattr(self, f.name) or getattr(base, f.name) for f in dataclasses.fields(self)
        }
        merged["addresses"] = (*base.addresses, *self.addresses)
        return Options(**merged)


@dataclass(frozen=True)
class _Place:
    """Where a process listens: a fixed address, or port 0 and the data dir where it publishes
    the address it got."""

    listen: str
    data_dir: Path | None = None

    def address(self, what: str) -> str:
        if not self.listen:
            raise Unreachable(f"cannot reach {what}: the coordinator lists no address for it")
        if self.data_dir is None:
            return self.listen
        try:
            return resolve_address(self.listen, self.data_dir)
        except ConfigError:
            raise Unreachable(
                f"cannot reach {what}: it has published no address in {self.data_dir}; {START_HINT}"
            ) from None


def find_config(explicit: Path | None) -> Path | None:
    """The cluster config to use: the one given, else the shipped one (in the package); None if
    there is none."""
    if explicit is not None:
        return explicit
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _parse_address(text: str) -> tuple[str, str]:
    region_id, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not region_id or not colon or not host or not port.isdigit():
        raise UsageError(f"--address: expected REGION=HOST:PORT, got {text!r}")
    return region_id, address


class Session:
    """The cluster as one command sees it. Use as a context manager: it closes its channels."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.out = Printer(options.json)
        # Explicit addresses alone name the whole cluster; with a config given too, they
        # override its addresses. The coordinator's address alone names it too: the regions
        # are then found in its catalog (ListRegions).
        explicit = options.addresses or options.coordinator
        self.config_path = find_config(options.config) if options.config or not explicit else None
        self.config: ClusterConfig | None = None
        if self.config_path is not None:
            try:
                self.config = load_cluster_config(self.config_path)
            except ConfigError as exc:
                raise UsageError(f"cluster config: {exc}") from None
        self._regions: dict[str, _Place] = {}
        coordinator: _Place | None = None
        if self.config is not None:
            for region in self.config.regions:
                self._regions[region.region_id] = _Place(region.listen, region.data_dir)
            coordinator = _Place(self.config.coordinator.listen, self.config.coordinator.data_dir)
        for text in options.addresses:
            region_id, address = _parse_address(text)
            self._regions[region_id] = _Place(address)
        if options.coordinator:
            coordinator = _Place(options.coordinator)
        self._coordinator_place = coordinator
        traced: tuple[tuple[str, str], ...] = (
            ((REQUEST_ID_METADATA, options.request_id),) if options.request_id else ()
        )
        self._metadata: tuple[tuple[str, str], ...] = (
            (bearer(options.token), *traced) if options.token else traced
        )
        self._operator_metadata: tuple[tuple[str, str], ...] = (
            (bearer(options.operator_token), *traced) if options.operator_token else traced
        )
        # TLS: with the CA given, or the cluster's own when its config says it runs with TLS.
        ca = options.ca
        if ca is None and self.config is not None and self.config.tls:
            ca = ca_path(self.config.tls_dir)
        self._root_certificates: bytes | None = None
        if ca is not None:
            try:
                self._root_certificates = read_ca(ca)
            except TlsError as exc:
                raise UsageError(f"--ca: {exc}") from None
        self._region_clients: dict[str, RegionClient] = {}
        self._coordinator_client: CoordinatorClient | None = None
        self._endpoints: list[Endpoint] = []
        if not self._regions and options.coordinator:
            try:
                listed = self.coordinator().list_regions()
            except BaseException:
                self.close()
                raise
            self._regions = {r.region_id: _Place(r.node_address) for r in listed}
        if not self._regions:
            raise UsageError(
                f"no cluster config found (looked for {DEFAULT_CONFIG}); give --config FILE "
                "(or CSBS_CONFIG), --coordinator HOST:PORT or --address REGION=HOST:PORT"
            )
        self.region_id = options.region or next(iter(self._regions))
        self.region_given = options.region or ""  # a filter where no region means every one
        if self.region_id not in self._regions:
            raise UsageError(
                f"--region: no region {self.region_id!r} in the cluster "
                f"(it has {', '.join(self._regions)})"
            )
        # Empty: the caller's main project in the region, as every call of the contract takes it.
        self.project_id = options.project or ""

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def region_ids(self) -> list[str]:
        return list(self._regions)

    @property
    def project_label(self) -> str:
        return self.project_id or "main project"

    def command_line(self, *words: str, region_id: str | None = None, project_id: str = "") -> str:
        """The csbs command a user would type to do `words` in a region and project: with
        --region and --project when they are not what the command would take by default."""
        parts = ["csbs"]
        region_id = region_id or self.region_id
        if region_id != self.region_ids[0]:
            parts += ["--region", region_id]
        project_id = project_id or (self.project_id if region_id == self.region_id else "")
        if project_id:
            parts += ["--project", project_id]
        return shlex.join([*parts, *words])

    def region(self, region_id: str | None = None) -> RegionClient:
        """The client of a region's node (the command's region if none is named)."""
        region_id = region_id or self.region_id
        client = self._region_clients.get(region_id)
        if client is None:
            place = self._regions.get(region_id)
            if place is None:
                raise UsageError(
                    f"no region {region_id!r} in the cluster (it has {', '.join(self._regions)})"
                )
            what = f"region {region_id}"
            where = f"in region {region_id}"
            if self.project_id:
                where += f", project {self.project_id}"
            endpoint = self._endpoint(what, place.address(what), where)
            client = self._region_clients[region_id] = RegionClient(region_id, endpoint)
        return client

    def coordinator(self) -> CoordinatorClient:
        if self._coordinator_client is None:
            what = "the coordinator"
            if self._coordinator_place is None:
                raise UsageError(
                    "no coordinator: give --coordinator HOST:PORT or a cluster config with one"
                )
            endpoint = self._endpoint(what, self._coordinator_place.address(what))
            self._coordinator_client = CoordinatorClient(endpoint)
        return self._coordinator_client

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()
        self._region_clients.clear()
        self._coordinator_client = None

    def _endpoint(self, what: str, address: str, not_found_where: str = "") -> Endpoint:
        endpoint = Endpoint(
            what,
            address,
            open_channel(address, self._root_certificates),
            self._metadata,
            not_found_where,
            operator_metadata=self._operator_metadata,
            tls=self._root_certificates is not None,
        )
        self._endpoints.append(endpoint)
        return endpoint
