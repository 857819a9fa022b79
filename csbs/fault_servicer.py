"""The FaultInjection servicer every process serves (operator credential): convert, call the
process's FaultRules (csbs.faults), convert back."""

from __future__ import annotations

import grpc

from csbs.faults import FaultRule, FaultRules, FaultSpec
from csbs.rpc import rpc_method
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import faults_pb2_grpc


def fault_spec_from_proto(rule: fpb.FaultRule) -> FaultSpec:
    """What a rule asks for; its output fields (ID, process, counters) are ignored."""
    return FaultSpec(
        method=rule.method,
        code=rule.code,
        message=rule.message,
        count=rule.count,
        probability=rule.probability if rule.HasField("probability") else 1.0,
        seed=rule.seed,
        delay_ms=rule.delay_ms,
    )


def fault_rule_to_proto(rule: FaultRule) -> fpb.FaultRule:
    return fpb.FaultRule(
        rule_id=rule.rule_id,
        method=rule.method,
        code=rule.code,
        message=rule.message,
        count=rule.count,
        probability=rule.probability,
        seed=rule.seed,
        delay_ms=rule.delay_ms,
        process=rule.process,
        calls_matched=rule.calls_matched,
        calls_failed=rule.calls_failed,
        remaining=rule.remaining,
    )


class FaultInjectionServicer(faults_pb2_grpc.FaultInjectionServicer):
    def __init__(self, rules: FaultRules) -> None:
        self._rules = rules

    @rpc_method
    def AddFaultRule(self, request: fpb.FaultRule, context: grpc.ServicerContext) -> fpb.FaultRule:
        return fault_rule_to_proto(self._rules.add(fault_spec_from_proto(request)))

    @rpc_method
    def ListFaultRules(
        self, request: fpb.ListFaultRulesRequest, context: grpc.ServicerContext
    ) -> fpb.ListFaultRulesResponse:
        return fpb.ListFaultRulesResponse(
            rules=[fault_rule_to_proto(r) for r in self._rules.list()]
        )

    @rpc_method
    def ClearFaultRules(
        self, request: fpb.ClearFaultRulesRequest, context: grpc.ServicerContext
    ) -> fpb.ClearFaultRulesResponse:
        return fpb.ClearFaultRulesResponse(cleared=self._rules.clear(request.rule_id))


def add_fault_injection(server: grpc.Server, rules: FaultRules) -> None:
    faults_pb2_grpc.add_FaultInjectionServicer_to_server(FaultInjectionServicer(rules), server)
