"""The gRPC edge shared by every process: the one table that turns domain errors into status
codes, the decorator that applies it around every RPC body, and server plumbing (health,
reflection, signals)."""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, NamedTuple, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from csbs import memory, reflection_v1
from csbs.client_core import SIMULATED_FAILURE
from csbs.errors import CsbsError, ErrorKind
from csbs.tls import ProcessTls, channel_credentials, server_credentials

log = logging.getLogger(__name__)

STATUS_FOR_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
}

# The largest message any csbs service accepts or sends (limits in the .proto).
MAX_MESSAGE_BYTES = 8 << 20

F = TypeVar("F", bound=Callable[..., Any])


def abort_simulated(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """Fails a call on purpose for the simulated world (an injected fault, a region outage):
    the trailing metadata says so, and a coordinator in simulated mode waits for it on the
    cluster clock rather than the wall clock (issue 13)."""
    context.set_trailing_metadata(((SIMULATED_FAILURE, "1"),))
    context.abort(code, message)


def _abort(context: grpc.ServicerContext, exc: BaseException, name: str) -> None:
    if isinstance(exc, CsbsError):
        if exc.simulated:
            abort_simulated(context, STATUS_FOR_KIND[exc.kind], exc.message)
        context.abort(STATUS_FOR_KIND[exc.kind], exc.message)
    if not context.is_active():
        # The caller went away (cancelled, or its deadline passed): nothing to answer.
        log.info("%s ended: the caller cancelled (%s)", name, type(exc).__name__)
        context.abort(grpc.StatusCode.CANCELLED, f"{name} was cancelled by the caller")
    log.exception("unexpected error in %s", name)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the process log")


def rpc_method(method: F) -> F:
    """Wraps a servicer method (unary or streaming response) so that domain errors become their
    status code and anything unexpected becomes INTERNAL with a plain message."""
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                _abort(context, exc, name)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _abort(context, exc, name)

    return unary  # type: ignore[return-value]


Behavior = Callable[[Any, grpc.ServicerContext], Any]


def rewrap(
    handler: grpc.RpcMethodHandler, behavior: Callable[[Behavior, Any, grpc.ServicerContext], Any]
) -> grpc.RpcMethodHandler:
    """`handler`, of any kind, with `behavior(inner, request, context)` called in place of its
    own behaviour `inner` (`request`: the request, or the request iterator of a client stream),
    for a server interceptor that acts when a call starts."""
    if handler.request_streaming and handler.response_streaming:
        inner, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        inner, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        inner, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        inner, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        return behavior(inner, request, context)

    made: grpc.RpcMethodHandler = make(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return made


def new_server(max_workers: int = 64, interceptors: Iterable[Any] = ()) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Issue 12: no bandwidth-delay probing, so a stream's receive window stays small and
            # a sender that is not being read waits (flow control) instead of filling this
            # process's memory: 16 concurrent 512 MiB WriteDisk streams peaked at 1.1 GB with
            # it, 361 MB without, at the same speed (replication too: bench/replicate.py).
            ("grpc.http2.bdp_probe", 0),
        ],
        maximum_concurrent_rpcs=max_workers * 4,
    )


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def add_health_and_reflection(
    server: grpc.Server, service_full_names: Iterable[str]
) -> health.HealthServicer:
    """Every csbs server serves the standard health service and server reflection."""
    names = list(service_full_names)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection_v1.enable_server_reflection([*names, health.SERVICE_NAME], server)
    return health_servicer


class CallDetails(NamedTuple):
    """An outgoing call's details, as a client interceptor passes them on."""

    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def replaced(details: Any, **changes: Any) -> CallDetails:
    """`details` (gRPC's or ours) with some fields changed."""
    fields = {f: getattr(details, f, None) for f in CallDetails._fields}
    return CallDetails(**{**fields, **changes})


class RewriteCalls(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Passes every outgoing call of any kind on with `rewrite(details)` (credentials to add,
    a default deadline)."""

    def __init__(self, rewrite: Callable[[Any], Any]) -> None:
        self._rewrite = rewrite

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._rewrite(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._rewrite(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._rewrite(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._rewrite(details), requests)


def rewrite_calls(channel: grpc.Channel, rewrite: Callable[[Any], Any]) -> grpc.Channel:
    return grpc.intercept_channel(channel, RewriteCalls(rewrite))


def open_channel(address: str, ca_pem: bytes | None = None) -> grpc.Channel:
    """A channel to a csbs process: TLS verifying the server against `ca_pem` when given,
    plaintext otherwise."""
    if ca_pem is None:
        return grpc.insecure_channel(address, options=channel_options())
    return grpc.secure_channel(address, channel_credentials(ca_pem), options=channel_options())


def bind(server: grpc.Server, listen: str, tls: ProcessTls | None = None) -> str:
    """Binds `listen` (port 0 for an ephemeral port), with TLS when `tls` is given, and returns
    the address actually bound."""
    host, _, _ = listen.rpartition(":")
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, server_credentials(tls))
    if port == 0:
        raise OSError(f"could not bind {listen}")
    return f"{host}:{port}"


def serve_until_signal(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    on_stop: Callable[[], None] = lambda: None,
    grace: float = 5.0,
) -> None:
    """Runs until SIGTERM or SIGINT: then health goes NOT_SERVING and the server drains."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    # A bounded wait, so that a signal taken by another thread (e.g. after SIGCONT) is still
    # seen; and freed memory goes back to the kernel now and then (csbs.memory).
    waited = 0.0
    while not stop.wait(1.0):
        waited += 1.0
        if waited >= memory.TRIM_EVERY_SECONDS:
            waited = 0.0
            memory.give_back()
    health_servicer.enter_graceful_shutdown()
    server.stop(grace).wait()
    on_stop()
