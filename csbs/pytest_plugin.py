"""The pytest plugin every install of csbs-sim registers (entry point `pytest11`): the
`csbs_cluster` fixture, a whole cluster for your own integration tests (csbs.testing).

Where each setting comes from, first found wins:
- the cluster config: `--csbs-config FILE`, ini `csbs_config` (relative to the ini file), else
  the shipped config (csbs/cluster.toml: three regions, two accounts);
- the scope of the fixture: `--csbs-scope`, ini `csbs_cluster_scope`, else "session" (one
  cluster for the whole run: tests that each make their own servers need no more);
- the clock: a `@pytest.mark.csbs_clock("simulated")` marker on the node of the fixture's scope
  (the test for function scope; the module's `pytestmark` for module scope; the class for class
  scope), `--csbs-clock`, ini `csbs_clock`, else the config's. A test marked with another clock
  than its cluster runs fails, saying so, rather than run on the wrong clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import pytest

if TYPE_CHECKING:  # the cluster is imported only once a test asks for it
    from csbs.testing import LocalCluster

Scope = Literal["session", "package", "module", "class", "function"]
SCOPES = ("session", "package", "module", "class", "function")
CLOCKS = ("wall", "simulated")
MARKER = "csbs_clock"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("csbs", "csbs-sim: the csbs_cluster fixture")
    group.addoption(
        "--csbs-config",
        metavar="FILE",
        help="cluster config the csbs_cluster fixture copies (default: the shipped one)",
    )
    group.addoption("--csbs-scope", choices=SCOPES, help="scope of csbs_cluster (default: session)")
    group.addoption(
        "--csbs-clock",
        choices=CLOCKS,
        help="cluster clock where no csbs_clock marker says (default: the config's)",
    )
    parser.addini("csbs_config", "cluster config for csbs_cluster", type="paths", default=[])
    parser.addini("csbs_cluster_scope", "scope of csbs_cluster", default="session")
    parser.addini("csbs_clock", "cluster clock of csbs_cluster: wall or simulated", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f'{MARKER}(clock): run the csbs_cluster of this test, module or class on the "wall" or '
        '"simulated" cluster clock',
    )


def _scope(fixture_name: str, config: pytest.Config) -> Scope:
    scope = str(config.getoption("csbs_scope") or config.getini("csbs_cluster_scope"))
    if scope not in SCOPES:
        raise pytest.UsageError(
            f"csbs_cluster_scope: expected one of {', '.join(SCOPES)}, got {scope!r}"
        )
    return cast(Scope, scope)


def _marked_clock(node: pytest.Item | pytest.Collector | None) -> str | None:
    marker = node.get_closest_marker(MARKER) if node is not None else None
    if marker is None:
        return None
    clock = marker.args[0] if marker.args else marker.kwargs.get("clock")
    if clock not in CLOCKS:
        raise pytest.UsageError(
            f"@pytest.mark.{MARKER}: expected one of {', '.join(CLOCKS)}, got {clock!r}"
        )
    return str(clock)


def _config_path(config: pytest.Config) -> Path | None:
    given = config.getoption("csbs_config")
    if given:
        return Path(given)
    paths: list[Path] = config.getini("csbs_config")
    return paths[0] if paths else None


@pytest.fixture(scope=_scope)
def csbs_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A whole csbs-sim cluster, serving: `.coordinator_address`, `.region_addresses` (region
    ID -> node address), `.tokens` (account ID -> API token), `.operator_token`, `.clock`, and
    `.client(account)`, the typed client (csbs.client.Client). Every process is stopped and the
    temp dir removed when the scope ends."""
    from csbs.testing import start_cluster

    options = request.config
    clock = (
        _marked_clock(request.node)
        or options.getoption("csbs_clock")
        or options.getini("csbs_clock")
        or None
    )
    with start_cluster(_config_path(options), clock=clock) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _csbs_clock_as_marked(request: pytest.FixtureRequest) -> None:
    """A test marked with a clock gets a cluster on that clock, or fails saying why."""
    if "csbs_cluster" not in request.fixturenames:
        return
    wanted = _marked_clock(request.node)
    if wanted is None:
        return
    cluster: LocalCluster = request.getfixturevalue("csbs_cluster")
    if cluster.clock != wanted:
        pytest.fail(
            f"this test is marked {MARKER}({wanted!r}) but its csbs_cluster (scope "
            f"{_scope('csbs_cluster', request.config)}) runs the {cluster.clock} clock: mark its "
            "module or class and choose that scope (--csbs-scope / csbs_cluster_scope), or give "
            "--csbs-clock / csbs_clock for the whole run",
            pytrace=False,
        )
