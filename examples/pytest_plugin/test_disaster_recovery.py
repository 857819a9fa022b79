"""Disaster recovery rehearsed against csbs-sim, from a test suite of your own: `pip install`
csbs-sim, and the `csbs_cluster` fixture starts a whole cluster (the shipped config: three
regions) for the session and stops it after. Run with `pytest`; nothing else to set up."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from csbs.client import MIB, Refused
from csbs.testing import LocalCluster

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
DR_PROJECT = "cn-east-3_dr"  # a second project of the default account in cn-east-3


def test_a_server_booted_from_a_replica_has_the_disks_of_the_source(
    csbs_cluster: LocalCluster,
) -> None:
    client = csbs_cluster.client()
    server = client.create_server(SOURCE, [4 * MIB, 2 * MIB], name="app")
    client.write_disk(SOURCE, server.server_id, 0, os.urandom(3 * MIB))
    client.write_disk(SOURCE, server.server_id, 1, os.urandom(MIB), offset=MIB)
    source_sums = [client.disk_sha256(SOURCE, server.server_id, disk) for disk in (0, 1)]

    backup = client.back_up(SOURCE, server.server_id, name="app-daily")
    job = client.replicate(SOURCE, backup.backup_id, TARGET, to_project_id=DR_PROJECT)
    image = client.create_image(TARGET, job.replica_id, name="app-dr", project_id=DR_PROJECT)
    copy = client.create_server_from_image(TARGET, image.image_id, project_id=DR_PROJECT)

    copy_sums = [
        client.disk_sha256(TARGET, copy.server_id, disk, project_id=DR_PROJECT) for disk in (0, 1)
    ]
    assert copy_sums == source_sums


def test_a_replica_cannot_be_replicated_again(csbs_cluster: LocalCluster) -> None:
    client = csbs_cluster.client()
    server = client.create_server(SOURCE, [MIB])
    backup = client.back_up(SOURCE, server.server_id)
    job = client.replicate(SOURCE, backup.backup_id, TARGET)
    with pytest.raises(Refused, match="R2"):
        client.replicate(TARGET, job.replica_id, SOURCE)


def test_the_cluster_gives_its_addresses_tokens_and_operator_credential(
    csbs_cluster: LocalCluster,
) -> None:
    assert set(csbs_cluster.region_addresses) == {"cn-north-4", "cn-east-3", "cn-south-1"}
    assert all(a.startswith("127.0.0.1:") for a in csbs_cluster.region_addresses.values())
    assert csbs_cluster.coordinator_address.startswith("127.0.0.1:")
    assert set(csbs_cluster.tokens) == {"default", "acme"}
    # The operator credential moves a simulated clock, and is refused on a wall clock.
    client = csbs_cluster.client()
    if csbs_cluster.clock == "simulated":
        before = client.coordinator.get_clock().now.ToDatetime()
        after = client.advance_clock(timedelta(days=1)).now.ToDatetime()
        assert after - before == timedelta(days=1)
    else:
        with pytest.raises(Refused):
            client.advance_clock(timedelta(days=1))
