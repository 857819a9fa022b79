"""Credentials on the gRPC edge, both ends.

Servers: `AuthInterceptor` checks the `authorization: Bearer …` metadata of every call against
the credential its service needs (an account's token on user services, the cluster credential
on RegionNodeInternal, the operator credential on the admin services; health and reflection are
open, as stock tools expect). An accepted call's servicer finds its `Caller` with `caller_of`.
The interceptor also bounds how many streams one account holds open at once, so that a client
that opens streams and stops reading cannot take every server thread.

Clients: `with_metadata` adds the credential a method needs to each outgoing call.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import grpc

from csbs.credentials import Caller, ClusterSecrets, Role
from csbs.errors import Unauthenticated
from csbs.rpc import Behavior, replaced, rewrap, rewrite_calls

AUTHORIZATION = "authorization"
# The account the coordinator acts for on a node's user service (cluster credential only).
ACTING_ACCOUNT = "x-csbs-account"
# Streams (of any direction) one account may hold open on one process at once. Well under the
# server's thread count, so that other accounts, and this account's unary calls, are served.
STREAMS_PER_ACCOUNT = 16

Metadata = Sequence[tuple[str, str | bytes]]


def bearer(token: str) -> tuple[str, str]:
    return (AUTHORIZATION, f"Bearer {token}")


def _short(method: str) -> str:
    """'/csbs.v1.RegionNodeInternal/WriteChunks' -> 'RegionNodeInternal.WriteChunks'."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}.{name}"


class _Refusal(NamedTuple):
    code: grpc.StatusCode
    message: str


class CallerContext:
    """The servicer's context with the authenticated caller attached; every other attribute is
    the gRPC context's own."""

    def __init__(self, context: grpc.ServicerContext, caller: Caller) -> None:
        self._context = context
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def caller_of(context: grpc.ServicerContext) -> Caller:
    caller = getattr(context, "caller", None)
    if not isinstance(caller, Caller):
        raise Unauthenticated("this call carries no checked credential")
    return caller


class _StreamSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, key: str) -> Callable[[], None] | None:
        """A release function, or None when `key` already holds `limit` streams."""
        with self._lock:
            if self._open[key] >= self.limit:
                return None
            self._open[key] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._open[key] -= 1

        return release


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """`required` maps a service's full name to the role its calls need; services not in it
    (health, reflection) are open. `coordinator_acts`: the cluster credential may make user
    calls for the account named in ACTING_ACCOUNT (on the nodes, whose user service the
    coordinator calls for the accounts it works for)."""

    def __init__(
        self,
        secrets: ClusterSecrets,
        required: Mapping[str, Role],
        *,
        coordinator_acts: bool = False,
        streams_per_account: int = STREAMS_PER_ACCOUNT,
    ) -> None:
        self._secrets = secrets
        self._required = required
        self._coordinator_acts = coordinator_acts
        self._slots = _StreamSlots(streams_per_account)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        required = self._required.get(method.lstrip("/").partition("/")[0])
        if handler is None or required is None:
            return handler
        verdict = self._check(handler_call_details.invocation_metadata or (), required, method)
        streaming = handler.request_streaming or handler.response_streaming
        return _wrapped(handler, verdict, self._slots if streaming else None)

    def _check(self, metadata: Metadata, required: Role, method: str) -> Caller | _Refusal:
        values = dict(metadata)
        header = values.get(AUTHORIZATION)
        name = _short(method)
        if header is None:
            return _Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{name} needs {required.value}, sent as 'authorization: Bearer <token>' metadata",
            )
        scheme, _, token = str(header).partition(" ")
        caller = self._secrets.identify(token.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            return _Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{name}: the token is not known to this cluster "
                "(expected 'authorization: Bearer <token>')",
            )
        if required is Role.USER and caller.role is Role.CLUSTER and self._coordinator_acts:
            # The coordinator acting for an account on a node's user service.
            return Caller(Role.CLUSTER, str(values.get(ACTING_ACCOUNT, "")))
        if caller.role is not required:
            return _Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name} needs {required.value}; {caller.role.value} cannot stand in for it",
            )
        return caller


def _wrapped(handler: Any, verdict: Caller | _Refusal, slots: _StreamSlots | None) -> Any:
    def refused(inner: Behavior, request: Any, context: grpc.ServicerContext) -> Any:
        assert isinstance(verdict, _Refusal)
        context.abort(verdict.code, verdict.message)

    def accepted(inner: Behavior, request: Any, context: grpc.ServicerContext) -> Any:
        assert isinstance(verdict, Caller)
        if slots is not None and verdict.role is Role.USER:
            release = slots.take(verdict.account_id)
            if release is None:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"account {verdict.account_id!r} already holds {slots.limit} open streams "
                    "on this server: finish or cancel some (read what you asked for) first",
                )
            elif not context.add_callback(release):
                release()
        return inner(request, CallerContext(context, verdict))

    return rewrap(handler, refused if isinstance(verdict, _Refusal) else accepted)


# --- the client side ----------------------------------------------------------------------------


def with_metadata(channel: grpc.Channel, metadata_for: Callable[[str], Metadata]) -> grpc.Channel:
    """The channel with `metadata_for(method)` added to every call that does not carry its own
    authorization."""

    def add(details: Any) -> Any:
        existing = list(details.metadata or ())
        if any(key == AUTHORIZATION for key, _ in existing):
            return details
        method = details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        return replaced(details, metadata=[*existing, *metadata_for(name)])

    return rewrite_calls(channel, add)
