"""The command line's clients of the operator calls for rehearsing failures (issue 13): the
fault rules of any process (FaultInjection, served by the coordinator and every region node)
and a region's outage (RegionNodeAdmin). Every call carries the operator credential; failures
read as every other call's do (csbs.cli.client.Endpoint)."""

from __future__ import annotations

from csbs.cli.client import Endpoint
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub


class FaultClient:
    """The fault rules of one process ("coordinator" or a region's ID)."""

    def __init__(self, process: str, endpoint: Endpoint) -> None:
        self.process = process
        self.endpoint = endpoint
        self._stub = FaultInjectionStub(endpoint.channel)

    def add(self, rule: fpb.FaultRule) -> fpb.FaultRule:
        # Not retried: a second rule would be added if the first answer was lost.
        added: fpb.FaultRule = self.endpoint.unary(self._stub.AddFaultRule, rule, operator=True)
        return added

    def list(self) -> list[fpb.FaultRule]:
        answer: fpb.ListFaultRulesResponse = self.endpoint.unary(
            self._stub.ListFaultRules, fpb.ListFaultRulesRequest(), operator=True, retry=True
        )
        return list(answer.rules)

    def clear(self, rule_id: str = "") -> int:
        answer: fpb.ClearFaultRulesResponse = self.endpoint.unary(
            self._stub.ClearFaultRules,
            fpb.ClearFaultRulesRequest(rule_id=rule_id),
            operator=True,
            retry=True,
        )
        return answer.cleared


class RegionAdminClient:
    """A region's own operator controls, on its node's admin service: its outage and whether it
    accepts replication (R5)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._stub = RegionNodeAdminStub(endpoint.channel)

    def outage(self) -> pb.RegionOutage:
        outage: pb.RegionOutage = self.endpoint.unary(
            self._stub.GetRegionOutage, pb.GetRegionOutageRequest(), operator=True, retry=True
        )
        return outage

    def set_outage(self, out: bool, reason: str = "") -> pb.RegionOutage:
        # Idempotent: the same state again changes nothing.
        outage: pb.RegionOutage = self.endpoint.unary(
            self._stub.SetRegionOutage,
            pb.SetRegionOutageRequest(out=out, reason=reason),
            operator=True,
            retry=True,
        )
        return outage

    def set_replication_capability(self, accepts: bool) -> None:
        """R5: whether the region accepts replication. Idempotent, so retried."""
        request = pb.SetReplicationCapabilityRequest(accepts_replication=accepts)
        self.endpoint.unary(self._stub.SetReplicationCapability, request, operator=True, retry=True)
