"""The world around the regions, as the cluster soak (tests/cluster_soak.py) fails it (issue
13): a slow link, a cut link, a region outage, a node's fault rule; each set with the operator's
calls, retried while a process restarts, and lifted again."""

from __future__ import annotations

import random
import time
from typing import Any

import grpc

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub
from tests.harness import Cluster

SOURCE, EAST, SOUTH = "cn-north-4", "cn-east-3", "cn-south-1"
SLOW_LINK = 512  # bytes a second from cn-north-4 to cn-east-3: a 1 MiB chunk takes 34 minutes
WORLD_FAULTS = ("cut link", "region outage", "fault rule")
DEADLINE = 30.0
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class World:
    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng

    def admin(self) -> CoordinatorAdminStub:
        return CoordinatorAdminStub(self.cluster.coordinator_channel())

    def region_admin(self, region: str) -> RegionNodeAdminStub:
        return RegionNodeAdminStub(self.cluster.channel(region))

    def faults(self, region: str) -> FaultInjectionStub:
        return FaultInjectionStub(self.cluster.channel(region))

    def apply(self, kind: str) -> Any:
        """Applies it (retried: a process may be restarting) and answers how to lift it."""
        if kind == "cut link":
            target = self.rng.choice((EAST, SOUTH))
            rate = SLOW_LINK if target == EAST else 0
            self.set_link(SOURCE, target, rate, cut=True)
            return lambda: self.set_link(SOURCE, target, rate, cut=False)
        if kind == "region outage":
            region = self.rng.choice((SOURCE, EAST, SOUTH))
            self.retried(
                lambda: self.region_admin(region).SetRegionOutage(
                    pb.SetRegionOutageRequest(out=True, reason="soak"), timeout=DEADLINE
                )
            )
            return lambda: self.retried(
                lambda: self.region_admin(region).SetRegionOutage(
                    pb.SetRegionOutageRequest(out=False), timeout=DEADLINE
                )
            )
        region = self.rng.choice((EAST, SOUTH))
        rule = fpb.FaultRule(
            method=self.rng.choice(("*/FindMissingChunks", "*/WriteChunks", "*/CreateReplica")),
            code=self.rng.choice(("UNAVAILABLE", "DEADLINE_EXCEEDED", "")),
            count=self.rng.randrange(1, 6),
            delay_ms=self.rng.choice((0, 200)),
            probability=self.rng.choice((1.0, 0.5)),
            seed=self.rng.randrange(1 << 16),
        )
        if not rule.code and not rule.delay_ms:
            rule.delay_ms = 100
        self.retried(lambda: self.faults(region).AddFaultRule(rule, timeout=DEADLINE))
        return lambda: self.retried(
            lambda: self.faults(region).ClearFaultRules(
                fpb.ClearFaultRulesRequest(), timeout=DEADLINE
            )
        )

    def set_link(self, source: str, target: str, rate: int, cut: bool) -> None:
        link = cpb.Link(
            source_region_id=source,
            target_region_id=target,
            bandwidth_bytes_per_second=rate,
            cut=cut,
        )
        self.retried(lambda: self.admin().SetLink(cpb.SetLinkRequest(link=link), timeout=DEADLINE))

    def retried(self, call: Any) -> None:
        for _ in range(20):
            try:
                call()
                return
            except grpc.RpcError as exc:
                if exc.code() not in TRANSIENT:
                    raise
            time.sleep(0.5)
        raise AssertionError("an operator's call never got through")

    def lift(self) -> None:
        """At the end: no link limited or cut, no region out, no fault rule."""
        for target in (EAST, SOUTH):
            self.retried(
                lambda t=target: self.admin().ClearLink(
                    cpb.ClearLinkRequest(source_region_id=SOURCE, target_region_id=t),
                    timeout=DEADLINE,
                )
            )
        for region in (SOURCE, EAST, SOUTH):
            self.retried(
                lambda r=region: self.region_admin(r).SetRegionOutage(
                    pb.SetRegionOutageRequest(out=False), timeout=DEADLINE
                )
            )
            self.retried(
                lambda r=region: self.faults(r).ClearFaultRules(
                    fpb.ClearFaultRulesRequest(), timeout=DEADLINE
                )
            )
