"""The cluster config file (TOML): regions, their projects and accounts, where each process
listens and keeps its data. Loaded once in each process's __main__ and passed down."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csbs.bandwidth import parse_bandwidth
from csbs.errors import InvalidArgument
from csbs.faults import COORDINATOR_PROCESS, FaultSpec, checked, methods_of
from csbs.files import write_atomic
from csbs.paging import PAGE_BYTES
from csbs.v1 import coordinator_pb2, region_node_pb2

DEFAULT_CHUNK_SIZE = 1 << 20
ADDRESS_FILE = "address"
# The shipped config, inside the package so that an installed csbs-sim has it too (issue 14).
SHIPPED_CONFIG = Path(__file__).resolve().with_name("cluster.toml")
METRICS_ADDRESS_FILE = "metrics_address"  # where the process serves Prometheus metrics (HTTP)
METRICS_LISTEN = "127.0.0.1:0"
SECRETS_FILE = "secrets.json"
# A token given in the config: long and random enough to be a secret.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{24,128}")
# How long the coordinator waits for each region when it lists replication targets: a region
# that has not answered by then is shown as unreachable (issue 12).
TARGETS_TIMEOUT_SECONDS = 2.0


class ConfigError(ValueError):
    """The config file is malformed; the message names the key."""


@dataclass(frozen=True)
class ProjectConfig:
    project_id: str
    name: str
    account_id: str
    main: bool


@dataclass(frozen=True)
class QuotaConfig:
    """A project's quotas as the config starts them (-1: unlimited, as the real API says)."""

    project_id: str
    backups: int = -1
    backup_capacity_gb: int = -1


@dataclass(frozen=True)
class RegionConfig:
    region_id: str
    display_name: str
    listen: str
    accepts_replication: bool
    projects: tuple[ProjectConfig, ...]
    data_dir: Path
    # Issue 13: the bytes the region's chunk store may hold (0: unlimited), and its projects'
    # quotas. Start values: an operator call changes them live (region_node: which wins).
    capacity_bytes: int = 0
    quotas: tuple[QuotaConfig, ...] = ()
    metrics_listen: str = METRICS_LISTEN  # issue 14: Prometheus metrics over HTTP

    def main_project(self, account_id: str) -> ProjectConfig:
        return next(p for p in self.projects if p.account_id == account_id and p.main)


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    data_dir: Path
    # How long a replication job keeps retrying transient node errors without making progress.
    retry_budget_seconds: float = 60.0
    # How often clean-ups left by failed jobs (a replica to remove, a hold to release) are retried.
    cleanup_interval_seconds: float = 2.0
    # How long ListReplicationTargets waits for each region before showing it unreachable.
    targets_timeout_seconds: float = TARGETS_TIMEOUT_SECONDS
    # The most bytes of runs a ListPolicyRuns page holds (at most PAGE_BYTES; lower in tests).
    runs_page_bytes: int = PAGE_BYTES
    # Simulated mode: how long (on the cluster clock) a job keeps retrying a cut link.
    simulated_retry_budget_seconds: float = 3600.0
    metrics_listen: str = METRICS_LISTEN  # issue 14: Prometheus metrics over HTTP


@dataclass(frozen=True)
class LinkConfig:
    """A link between two regions (issue 13), as `[[links]]` gives it and as the coordinator
    keeps it live (coordinator/links.py)."""

    source_region_id: str
    target_region_id: str
    bandwidth_bytes_per_second: int = 0  # 0: unlimited
    latency_ms: int = 0
    cut: bool = False

    @property
    def pair(self) -> tuple[str, str]:
        return self.source_region_id, self.target_region_id

    @property
    def name(self) -> str:
        return f"{self.source_region_id} -> {self.target_region_id}"

    def describe(self) -> str:
        state = "cut" if self.cut else "up"
        rate = self.bandwidth_bytes_per_second
        speed = f"{rate} bytes/s" if rate else "unlimited"
        return f"link {self.name} ({state}, {speed}, {self.latency_ms} ms)"


@dataclass(frozen=True)
class AccountConfig:
    account_id: str
    name: str
    # API tokens given by the config (plain text, e.g. for tests); when none are given, one is
    # generated at the cluster's first start and only its hash is kept (csbs/credentials.py).
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessFaultRule:
    """A fault rule of the config's [faults] section, for the process that holds it."""

    process: str  # "coordinator" or a region's ID
    spec: FaultSpec  # checked


@dataclass(frozen=True)
class FaultsConfig:
    """[faults]: the fault rules each process holds from its start, and the regions that start
    out (issue 13)."""

    rules: tuple[ProcessFaultRule, ...] = ()
    outages: tuple[str, ...] = ()

    def rules_for(self, process: str) -> tuple[FaultSpec, ...]:
        return tuple(rule.spec for rule in self.rules if rule.process == process)


@dataclass(frozen=True)
class ClusterConfig:
    path: Path
    data_dir: Path
    chunk_size: int
    simulated_clock: bool
    accounts: tuple[AccountConfig, ...]
    regions: tuple[RegionConfig, ...]
    coordinator: CoordinatorConfig
    # Operator credentials given by the config; when none, one is generated at first start.
    operator_tokens: tuple[str, ...] = ()
    # TLS on every channel (a local CA and per-process certificates in tls_dir); off by default.
    tls: bool = False
    faults: FaultsConfig = FaultsConfig()
    # Links between regions to start with (`[[links]]`; the operator changes them live).
    links: tuple[LinkConfig, ...] = ()

    @property
    def secrets_path(self) -> Path:
        """The cluster secrets file (owner-only): token hashes and the cluster credential."""
        return self.data_dir / SECRETS_FILE

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def account(self, account_id: str) -> AccountConfig:
        for account in self.accounts:
            if account.account_id == account_id:
                return account
        raise KeyError(account_id)

    def region(self, region_id: str) -> RegionConfig:
        for region in self.regions:
            if region.region_id == region_id:
                return region
        raise KeyError(region_id)

    @property
    def default_account(self) -> AccountConfig:
        return self.accounts[0]


def _require(table: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}")
    return value


def _positive_seconds(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"coordinator.{key}: a positive number of seconds")
    return float(value)


def _page_bytes(table: dict[str, Any], key: str) -> int:
    value = table.get(key, PAGE_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PAGE_BYTES:
        raise ConfigError(f"coordinator.{key}: a number of bytes from 1 to {PAGE_BYTES}")
    return value


def _tokens(table: dict[str, Any], where: str) -> tuple[str, ...]:
    tokens = table.get("tokens", [])
    if not isinstance(tokens, list) or not all(
        isinstance(t, str) and TOKEN_PATTERN.fullmatch(t) for t in tokens
    ):
        raise ConfigError(f"{where}.tokens: a list of tokens, each 24 to 128 of [A-Za-z0-9_-]")
    return tuple(tokens)


def _boolean(table: dict[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: true or false")
    return value


# The keys of a [[faults.rules]] table, and the TOML types each takes.
_RULE_KEYS: dict[str, tuple[type, ...]] = {
    "process": (str,),
    "method": (str,),
    "code": (str,),
    "message": (str,),
    "count": (int,),
    "probability": (int, float),
    "seed": (int,),
    "delay_ms": (int,),
}


def _fault_rule(table: object, where: str, region_ids: list[str]) -> ProcessFaultRule:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a table ([[faults.rules]])")
    for key, value in table.items():
        kinds = _RULE_KEYS.get(key)
        if kinds is None:
            raise ConfigError(f"{where}.{key}: unknown key (a rule takes {', '.join(_RULE_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, kinds):
            expected = "a number" if key == "probability" else kinds[0].__name__
            raise ConfigError(f"{where}.{key}: expected {expected}")
    process = _require(table, "process", where, str)
    if process != COORDINATOR_PROCESS and process not in region_ids:
        raise ConfigError(
            f"{where}.process: {COORDINATOR_PROCESS!r} or a region of the cluster "
            f"({', '.join(region_ids)}), got {process!r}"
        )
    spec = FaultSpec(
        method=table.get("method", ""),
        code=table.get("code", ""),
        message=table.get("message", ""),
        count=table.get("count", 0),
        probability=float(table.get("probability", 1.0)),
        seed=table.get("seed", 0),
        delay_ms=table.get("delay_ms", 0),
    )
    served = coordinator_pb2 if process == COORDINATOR_PROCESS else region_node_pb2
    try:
        return ProcessFaultRule(process, checked(spec, methods_of(served.DESCRIPTOR)))
    except InvalidArgument as exc:
        # The message starts with the field it names: faults.rules[0].probability: ...
        raise ConfigError(f"{where}.{exc.message}") from None


def _faults(raw: dict[str, Any], region_ids: list[str]) -> FaultsConfig:
    table = raw.get("faults", {})
    if not isinstance(table, dict):
        raise ConfigError("faults: a table")
    for key in table:
        if key not in ("rules", "outages"):
            raise ConfigError(f"faults.{key}: unknown key (faults takes rules and outages)")
    outages = table.get("outages", [])
    if not isinstance(outages, list) or not all(isinstance(o, str) for o in outages):
        raise ConfigError("faults.outages: a list of region IDs")
    for region_id in outages:
        if region_id not in region_ids:
            raise ConfigError(
                f"faults.outages: no region {region_id!r} in the cluster ({', '.join(region_ids)})"
            )
    rules = table.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("faults.rules: a list of tables ([[faults.rules]])")
    return FaultsConfig(
        rules=tuple(
            _fault_rule(rule, f"faults.rules[{i}]", region_ids) for i, rule in enumerate(rules)
        ),
        outages=tuple(dict.fromkeys(outages)),
    )


def _count(value: object, where: str, least: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: {what}")
    return value


QUOTA_KEYS = ("project", "backups", "backup_capacity_gb")


def _quotas(raw: object, where: str, projects: list[ProjectConfig]) -> tuple[QuotaConfig, ...]:
    """`quotas = [ { project = "...", backups = 10, backup_capacity_gb = 100 }, ... ]`: a
    project of the region each, at most once; a quota left out is unlimited."""
    if not isinstance(raw, list) or not all(isinstance(q, dict) for q in raw):
        raise ConfigError(
            f'{where}.quotas: a list of tables such as {{ project = "...", backups = 10 }}'
        )
    known = {p.project_id for p in projects}
    out: list[QuotaConfig] = []
    for k, q in enumerate(raw):
        qwhere = f"{where}.quotas[{k}]"
        for key in q:
            if key not in QUOTA_KEYS:
                raise ConfigError(f"{qwhere}.{key}: unknown key (known: {', '.join(QUOTA_KEYS)})")
        project_id = _require(q, "project", qwhere, str)
        if project_id not in known:
            raise ConfigError(f"{qwhere}.project: {project_id!r} is not a project of this region")
        if any(c.project_id == project_id for c in out):
            raise ConfigError(f"{qwhere}.project: {project_id!r} has quotas twice")
        limit = "a whole number, -1 (unlimited) or more"
        out.append(
            QuotaConfig(
                project_id,
                _count(q.get("backups", -1), f"{qwhere}.backups", -1, limit),
                _count(q.get("backup_capacity_gb", -1), f"{qwhere}.backup_capacity_gb", -1, limit),
            )
        )
    return tuple(out)


def _in_checkout() -> bool:
    """The package runs from the repository (make install, pip install -e), not from a wheel."""
    return (SHIPPED_CONFIG.parent.parent / "pyproject.toml").is_file()


def installed_data_dir() -> Path:
    """Where an installed csbs-sim keeps the shipped config's cluster (its data_dir, relative to
    the config, would be inside site-packages): the user's state directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).resolve() / "csbs-sim"


def load_cluster_config(path: Path | str) -> ClusterConfig:
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    cluster = raw.get("cluster", {})
    data_dir = (path.parent / cluster.get("data_dir", "var")).resolve()
    if path == SHIPPED_CONFIG and not _in_checkout():
        data_dir = installed_data_dir()
    chunk_size = int(cluster.get("chunk_size", DEFAULT_CHUNK_SIZE))
    if chunk_size < 64 * 1024 or chunk_size > 4 << 20 or chunk_size & (chunk_size - 1):
        raise ConfigError("cluster.chunk_size: a power of two from 64 KiB to 4 MiB")
    accounts = tuple(
        AccountConfig(
            _require(a, "id", f"accounts[{i}]", str),
            str(a.get("name", a["id"])),
            _tokens(a, f"accounts[{i}]"),
        )
        for i, a in enumerate(raw.get("accounts", [{"id": "default"}]))
    )
    if not accounts:
        raise ConfigError("accounts: at least one account")
    if len({a.account_id for a in accounts}) != len(accounts):
        raise ConfigError("accounts: account IDs must be unique")
    given = [t for a in accounts for t in a.tokens]
    operator_tokens = _tokens(raw.get("operator", {}), "operator")
    if len(set(given) | set(operator_tokens)) != len(given) + len(operator_tokens):
        raise ConfigError("accounts.tokens, operator.tokens: a token may serve only one holder")
    account_ids = {a.account_id for a in accounts}
    regions = []
    seen_projects: set[str] = set()
    for i, r in enumerate(raw.get("regions", [])):
        where = f"regions[{i}]"
        region_id = _require(r, "id", where, str)
        projects = []
        for j, p in enumerate(r.get("projects", [])):
            pwhere = f"{where}.projects[{j}]"
            project = ProjectConfig(
                project_id=_require(p, "id", pwhere, str),
                name=str(p.get("name", p["id"])),
                account_id=str(p.get("account", accounts[0].account_id)),
                main=bool(p.get("main", False)),
            )
            if project.account_id not in account_ids:
                raise ConfigError(f"{pwhere}.account: unknown account {project.account_id!r}")
            if project.project_id in seen_projects:
                raise ConfigError(f"{pwhere}.id: project {project.project_id!r} appears twice")
            seen_projects.add(project.project_id)
            projects.append(project)
        for account in accounts:
            mains = [p for p in projects if p.account_id == account.account_id and p.main]
            if len(mains) != 1:
                raise ConfigError(
                    f"{where}: account {account.account_id!r} must have exactly one main "
                    f"project in region {region_id!r} (P3), found {len(mains)}"
                )
        regions.append(
            RegionConfig(
                region_id=region_id,
                display_name=str(r.get("name", region_id)),
                listen=str(r.get("listen", "127.0.0.1:0")),
                accepts_replication=bool(r.get("accepts_replication", False)),
                projects=tuple(projects),
                data_dir=data_dir / region_id,
                capacity_bytes=_count(
                    r.get("capacity_bytes", 0),
                    f"{where}.capacity_bytes",
                    0,
                    "a whole number of bytes, 0 (unlimited) or more",
                ),
                quotas=_quotas(r.get("quotas", []), where, projects),
                metrics_listen=str(r.get("metrics_listen", METRICS_LISTEN)),
            )
        )
    if len({r.region_id for r in regions}) != len(regions):
        raise ConfigError("regions: region IDs must be unique")
    coordinator = raw.get("coordinator", {})
    retry_budget = _positive_seconds(coordinator, "retry_budget_seconds", 60.0)
    cleanup_interval = _positive_seconds(coordinator, "cleanup_interval_seconds", 2.0)
    targets_timeout = _positive_seconds(
        coordinator, "targets_timeout_seconds", TARGETS_TIMEOUT_SECONDS
    )
    return ClusterConfig(
        path=path,
        data_dir=data_dir,
        chunk_size=chunk_size,
        simulated_clock=str(cluster.get("clock", "wall")) == "simulated",
        accounts=accounts,
        regions=tuple(regions),
        operator_tokens=operator_tokens,
        tls=_boolean(cluster, "tls", "cluster"),
        faults=_faults(raw, [r.region_id for r in regions]),
        links=_links(raw.get("links", []), {r.region_id for r in regions}),
        coordinator=CoordinatorConfig(
            listen=str(coordinator.get("listen", "127.0.0.1:0")),
            data_dir=data_dir / "coordinator",
            retry_budget_seconds=retry_budget,
            cleanup_interval_seconds=cleanup_interval,
            targets_timeout_seconds=targets_timeout,
            runs_page_bytes=_page_bytes(coordinator, "runs_page_bytes"),
            simulated_retry_budget_seconds=_positive_seconds(
                coordinator, "simulated_retry_budget_seconds", 3600.0
            ),
            metrics_listen=str(coordinator.get("metrics_listen", METRICS_LISTEN)),
        ),
    )


LINK_KEYS = ("source", "target", "bandwidth", "latency_ms", "cut")


def _links(tables: object, region_ids: set[str]) -> tuple[LinkConfig, ...]:
    """`[[links]]`: source, target, bandwidth ("100 MB/s", or bytes a second), latency_ms, cut."""
    if not isinstance(tables, list):
        raise ConfigError("links: a list of [[links]] tables")
    links: dict[tuple[str, str], LinkConfig] = {}
    for i, table in enumerate(tables):
        where = f"links[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: a table")
        for key in table:
            if key not in LINK_KEYS:
                raise ConfigError(
                    f"{where}.{key}: unknown key (a link takes {', '.join(LINK_KEYS)})"
                )
        ends = []
        for key in ("source", "target"):
            region_id = _require(table, key, where, str)
            if region_id not in region_ids:
                raise ConfigError(f"{where}.{key}: unknown region {region_id!r}")
            ends.append(region_id)
        if ends[0] == ends[1]:
            raise ConfigError(f"{where}: source and target must be two regions")
        if tuple(ends) in links:
            raise ConfigError(f"{where}: the link {ends[0]} -> {ends[1]} appears twice")
        bandwidth = table.get("bandwidth", 0)
        try:
            rate = parse_bandwidth(str(bandwidth))
        except ValueError as exc:
            raise ConfigError(f"{where}.bandwidth: {exc}") from exc
        latency = table.get("latency_ms", 0)
        if isinstance(latency, bool) or not isinstance(latency, int) or not 0 <= latency <= 600_000:
            raise ConfigError(f"{where}.latency_ms: a whole number of milliseconds, 0 to 600000")
        links[(ends[0], ends[1])] = LinkConfig(
            ends[0], ends[1], rate, latency, _boolean(table, "cut", where)
        )
    return tuple(links.values())


def write_address_file(data_dir: Path, address: str, name: str = ADDRESS_FILE) -> None:
    """Publishes the address a process actually bound (atomically), for ports chosen as 0;
    `name`: METRICS_ADDRESS_FILE for its metrics."""
    data_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(data_dir / name, address.encode())


def resolve_address(listen: str, data_dir: Path, name: str = ADDRESS_FILE) -> str:
    """Where to reach a process: its configured address, or the one it published if port 0."""
    if not listen.endswith(":0"):
        return listen
    try:
        return (data_dir / name).read_text().strip()
    except FileNotFoundError as exc:
        raise ConfigError(f"no address published in {data_dir}: is the process running?") from exc
