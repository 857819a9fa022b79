"""Fixtures that run real clusters: a fresh config in a temp dir, and the region node processes
of it, started before the test and always stopped after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from csbs.clock import WallClock
from csbs.config import ProjectConfig
from region_node.config import NodeConfig
from region_node.node import RegionNode
from tests.harness import Cluster, write_cluster_config


@pytest.fixture
def cluster_config(tmp_path: Path) -> Path:
    """A config of the default three regions, every process on port 0, data in tmp_path."""
    return write_cluster_config(tmp_path)


@pytest.fixture
def cluster(cluster_config: Path) -> Iterator[Cluster]:
    """The region nodes of a fresh cluster, serving; the test may kill, pause or restart them."""
    with Cluster(cluster_config) as running:
        running.start()
        yield running


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for every test of a module: for tests that only add state of their own and
    inject no faults."""
    with Cluster(write_cluster_config(tmp_path_factory.mktemp("shared_cluster"))) as running:
        running.start()
        yield running


@pytest.fixture(scope="module")
def coordinated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The default cluster with its coordinator, one for every test of a module."""
    path: Path = write_cluster_config(tmp_path_factory.mktemp("coordinated"))
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture
def node_service(tmp_path: Path) -> Iterator[RegionNode]:
    """A region node's domain in this process, on a real catalog and stores in tmp_path."""
    config = NodeConfig(
        region_id="cn-north-4",
        display_name="CN North-Beijing4",
        listen="127.0.0.1:0",
        accepts_replication=True,
        projects=(ProjectConfig("p1", "p1", "default", True),),
        data_dir=tmp_path / "node",
        chunk_size=1 << 20,
    )
    node = RegionNode(config, WallClock()).start()
    yield node
    node.close()
