"""Issue 6, TLS: a cluster with TLS on every channel (a local CA and per-process certificates
made at first start) runs the whole replication story with clients that verify the servers; a
plaintext client, or one trusting another CA, is refused, and `csbs` says why; the demo passes
over TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csbs.auth import bearer
from csbs.tls import ca_path, channel_credentials, ensure_process_tls
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeStub
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, REPO_ROOT, Cluster, write_cluster_config
from tests.node_helpers import (
    MIB,
    backup,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    write,
)
from tests.replication_helpers import replicated
from tests.test_cli import _clean_env, _one_error_line, cluster_env, csbs, csbs_json

SOURCE, TARGET, TARGET_DR = "cn-north-4", "cn-east-3", "cn-east-3_dr"
TOKEN = [bearer(ACCOUNT_TOKENS[DEFAULT_ACCOUNT])]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path = write_cluster_config(tmp_path_factory.mktemp("tls"), tls=True)
    with Cluster(path) as running:
        running.start(coordinator=True)
        yield running


def test_the_replication_story_runs_over_tls(tls_cluster: Cluster) -> None:
    """Every channel of this test (and the coordinator's to the nodes) is TLS, verified against
    the cluster's CA: a server backed up, replicated, an image and a server from it in the
    target region, with the source's bytes."""
    assert all(p.ca_pem() is not None for p in [*tls_cluster.nodes, tls_cluster.coordinator])
    here = node(tls_cluster.channel(SOURCE))
    server = make_server(here, [4, 2])
    for index, size in ((0, 4), (1, 2)):
        write(here, server.server_id, index, 0, seeded_bytes(900 + index, size * MIB))
    taken = backup(here, server.server_id)
    coordinator = CoordinatorStub(tls_cluster.coordinator_channel())
    job = replicated(coordinator, taken.backup_id, SOURCE, TARGET, target_project_id=TARGET_DR)
    assert job.progress.bytes_sent >= 6 * MIB
    there = node(tls_cluster.channel(TARGET))
    copy = server_from_backup(there, job.replica_id, TARGET_DR)
    for index in (0, 1):
        assert disk_sha256(there, copy.server_id, index, TARGET_DR) == disk_sha256(
            here, server.server_id, index
        )


def test_a_plaintext_client_or_another_ca_is_refused(tls_cluster: Cluster, tmp_path: Path) -> None:
    address = tls_cluster.node(SOURCE).address
    request = pb.GetRegionInfoRequest()
    with grpc.insecure_channel(address) as plain:
        code, _ = refusal(
            lambda: RegionNodeStub(plain).GetRegionInfo(request, timeout=5, metadata=TOKEN)
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    stranger = ensure_process_tls(tmp_path / "another-ca", "stranger")
    with grpc.secure_channel(address, channel_credentials(stranger.ca_pem)) as unverified:
        code, _ = refusal(
            lambda: RegionNodeStub(unverified).GetRegionInfo(request, timeout=5, metadata=TOKEN)
        )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_csbs_verifies_with_the_clusters_ca(tls_cluster: Cluster) -> None:
    env = cluster_env(tls_cluster)
    # The config says TLS: csbs trusts the cluster's CA without being told.
    regions = csbs_json(env, "region", "list")
    assert {r["region_id"] for r in regions} == {SOURCE, TARGET, "cn-south-1"}
    address = ("--address", f"{SOURCE}={tls_cluster.node(SOURCE).address}")
    token = ("--token", ACCOUNT_TOKENS[DEFAULT_ACCOUNT])
    ca = str(ca_path(tls_cluster.config.tls_dir))
    listed = csbs_json(_clean_env(), *address, *token, "--ca", ca, "region", "list")
    assert [r["region_id"] for r in listed] == [SOURCE]
    # A plaintext csbs is told the process serves TLS and what to give.
    done = csbs(_clean_env(), *address, *token, "region", "list", code=3)
    line = _one_error_line(done)
    assert "serves TLS" in line and "--ca" in line, line


def test_csbs_with_a_ca_against_a_plaintext_cluster_says_so(coordinated: Cluster) -> None:
    address = ("--address", f"{SOURCE}={coordinated.node(SOURCE).address}")
    material = ensure_process_tls(coordinated.config.data_dir / "unused-tls", "x")
    ca = coordinated.config.data_dir / "unused-tls" / "ca.pem"
    assert ca.read_bytes() == material.ca_pem
    done = csbs(_clean_env(), *address, "--ca", str(ca), "region", "list", code=3)
    line = _one_error_line(done)
    assert "does not serve TLS" in line, line


def test_the_demo_passes_over_tls() -> None:
    env = _clean_env()
    config = str(REPO_ROOT / "csbs" / "cluster.toml")
    done = csbs(env, "--config", config, "demo", "--fresh-cluster", "--tls", "--data-mib", "4")
    assert "TLS on every channel" in done.stdout
    assert "byte-for-byte the same" in done.stdout, done.stdout[-2000:]
