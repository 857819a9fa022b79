"""A real three-region cluster starts, serves health and tells each region's identity."""

from __future__ import annotations

import pytest

from csbs.v1 import region_node_pb2, region_node_pb2_grpc
from tests.harness import Cluster


@pytest.mark.timeout(90)
def test_every_region_node_serves_health_and_its_region_info(cluster: Cluster) -> None:
    expected = {"cn-north-4": True, "cn-east-3": True, "cn-south-1": False}
    assert cluster.region_ids == list(expected)

    for region_id, accepts_replication in expected.items():
        assert cluster.health(region_id) == "SERVING"
        assert cluster.health(region_id, "csbs.v1.RegionNode") == "SERVING"
        stub = region_node_pb2_grpc.RegionNodeStub(cluster.channel(region_id))
        info = stub.GetRegionInfo(region_node_pb2.GetRegionInfoRequest(), timeout=5)
        assert info.region_id == region_id
        assert info.accepts_replication is accepts_replication
