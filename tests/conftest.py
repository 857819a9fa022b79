"""Fixtures that run real clusters: a fresh config in a temp dir, and the region node processes
of it, started before the test and always stopped after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
