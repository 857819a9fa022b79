"""The gRPC edge of a region outage (region_node.services.outage): while the region is out, a
call of a gated service (RegionNode, RegionNodeInternal) answers UNAVAILABLE naming the region
and the reason, and a stream already running ends UNAVAILABLE at its next message, in either
direction. Other services (RegionNodeAdmin, FaultInjection, health, reflection) pass, so the
operator can bring the region back. Placed after AuthInterceptor: a call without the right
credential is refused for that, as ever."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from csbs.faults import service_of
from csbs.rpc import Behavior, abort_simulated, rewrap
from region_node.services.outage import OutageService


class OutageGate(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, outage: OutageService, gated_services: Iterable[str]) -> None:
        self._outage = outage
        self._gated = frozenset(gated_services)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or service_of(handler_call_details.method) not in self._gated:
            return handler
        streaming = handler.request_streaming or handler.response_streaming
        if not streaming and not self._outage.out:
            return handler  # a unary call in service: nothing to watch
        request_streaming = handler.request_streaming
        response_streaming = handler.response_streaming

        def gated(inner: Behavior, request: Any, context: grpc.ServicerContext) -> Any:
            if self._outage.out:
                self._refuse(context)
            if request_streaming:
                request = self._requests(request)
            answer = inner(request, context)
            if response_streaming:
                return self._responses(answer, context)
            return answer

        return rewrap(handler, gated)

    def _refuse(self, context: grpc.ServicerContext) -> None:
        abort_simulated(context, grpc.StatusCode.UNAVAILABLE, self._outage.refusal().message)

    def _requests(self, messages: Iterator[Any]) -> Iterator[Any]:
        """The request stream, ended by the outage: raised inside the servicer as the domain
        error RegionOut (UNAVAILABLE), so that it stops as for any refusal."""
        for message in messages:
            if self._outage.out:
                raise self._outage.refusal()
            yield message

    def _responses(self, messages: Iterable[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        iterator = iter(messages)
        try:
            for message in iterator:
                if self._outage.out:
                    self._refuse(context)
                yield message
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # the servicer's generator stops and releases what it holds
