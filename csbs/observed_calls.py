"""The outermost server interceptor of every csbs process (issue 14): each call is given its
request ID (the one the client sent as `x-request-id`, or a new one), answered back in the
initial metadata and bound while the call runs (csbs.request_ids), counted by its final status
code and timed (csbs.metrics), and logged in one line. Outermost, so that it sees the calls the
credential check, an outage or a fault rule refused too. Per call, never per message."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from csbs import request_ids
from csbs.metrics import ProcessMetrics
from csbs.rpc import Behavior, rewrap

log = logging.getLogger("csbs.calls")

# Calls that are counted but not logged: probes and tools, not requests.
QUIET_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
_LOUD_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})
_END = object()


class ObservedCalls(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: ProcessMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        sent = next(
            (
                value
                for key, value in handler_call_details.invocation_metadata or ()
                if key == request_ids.REQUEST_ID_METADATA
            ),
            None,
        )
        quiet = service in QUIET_SERVICES
        streaming = handler.response_streaming

        def ended(context: grpc.ServicerContext, start: float, fallback: grpc.StatusCode) -> None:
            code = context.code() or _left(context, fallback)
            code_name = getattr(code, "name", str(code))
            seconds = time.perf_counter() - start
            self._metrics.call_ended(service, name, code_name, seconds)
            if not quiet:
                level = logging.WARNING if code_name in _LOUD_CODES else logging.INFO
                details = "" if code_name == "OK" else f": {_text(context.details())}"
                log.log(level, "%s/%s %s in %.3fs%s", service, name, code_name, seconds, details)

        def observed(inner: Behavior, request: Any, context: grpc.ServicerContext) -> Any:
            request_id = request_ids.accepted(sent)
            start = time.perf_counter()
            with request_ids.bound(request_id):
                with contextlib.suppress(Exception):  # a caller already gone: the call ends
                    context.send_initial_metadata(((request_ids.REQUEST_ID_METADATA, request_id),))
                try:
                    answer = inner(request, context)
                except BaseException:
                    ended(context, start, grpc.StatusCode.UNKNOWN)
                    raise
                if not streaming:
                    ended(context, start, grpc.StatusCode.OK)
                    return answer
            counted = threading.Lock()  # a stream is counted once: at its end, or if it never
            # started (the caller left before its first message), when the call terminates

            def stream_ended(fallback: grpc.StatusCode) -> None:
                if counted.acquire(blocking=False):
                    ended(context, start, fallback)

            def terminated() -> None:
                with request_ids.bound(request_id):
                    stream_ended(grpc.StatusCode.CANCELLED)

            context.add_callback(terminated)
            return _stream(answer, request_id, stream_ended)

        return rewrap(handler, observed)


def _left(context: grpc.ServicerContext, fallback: grpc.StatusCode) -> grpc.StatusCode:
    """What a call that set no code ended with: `fallback`, unless the caller is gone (it saw
    DEADLINE_EXCEEDED if the deadline passed, else CANCELLED), whatever the servicer returned."""
    if fallback != grpc.StatusCode.OK or context.is_active():
        return fallback
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _text(details: str | bytes | None) -> str:
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return details or ""


def _stream(
    messages: Iterable[Any], request_id: str, ended: Callable[[grpc.StatusCode], None]
) -> Iterator[Any]:
    """A response stream, with the request ID bound while each message is made, ended with its
    status: OK at its end, the code the servicer aborted with, CANCELLED if the caller left."""
    iterator = iter(messages)
    fallback = grpc.StatusCode.OK
    try:
        while True:
            # Bound only while the servicer makes the message: between two, the thread is idle.
            with request_ids.bound(request_id):
                message = next(iterator, _END)
            if message is _END:
                return
            yield message
    except GeneratorExit:
        fallback = grpc.StatusCode.CANCELLED
        raise
    except BaseException:
        fallback = grpc.StatusCode.UNKNOWN
        raise
    finally:
        with request_ids.bound(request_id):
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            ended(fallback)
