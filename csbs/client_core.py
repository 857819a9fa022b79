"""The one core of every client of a csbs process (the coordinator's clients of the region
nodes in csbs.clients, the command line's in csbs.cli.client): a deadline on every call, retries
of idempotent calls on transient codes only, the one table of what a failed call's status code
means, watches opened again, and List calls paged to the end.

A caller says how it retries (`Retries`) and how a failure reads to its own users (`to_error`,
given the failure read once as a `Failure`); everything else is written here once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from csbs.errors import (
    AlreadyExists,
    ChunkCorrupted,
    CsbsError,
    ErrorKind,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from csbs.paging import MAX_PAGE_SIZE

T = TypeVar("T")

LIST_PAGE_SIZE = MAX_PAGE_SIZE  # the most a List call returns at once

# Codes worth another try: the callee may answer next time. Every other code is a deliberate
# answer (a refusal in product words, a full region, lost data, a bug): asking again gives the
# same answer.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)

# The trailing metadata key of a failure the callee made on purpose for the simulated world.
SIMULATED_FAILURE = "csbs-simulated-failure"

# gRPC's own RESOURCE_EXHAUSTED when a server runs its maximum of concurrent calls: unlike a
# node's (a region with no storage space left), it passes.
BUSY_SERVER = "Concurrent RPC limit exceeded"


@dataclass(frozen=True)
class Meaning:
    """What a status code says about a failed call: the domain error it reads as (its kind is
    the kind whoever asked the caller sees), and whether it is the callee's refusal in product
    words (its message names the rule or the field, and is kept)."""

    error: type[CsbsError]
    refusal: bool

    @property
    def kind(self) -> ErrorKind:
        return self.error.kind


# The one table: status code -> what it means. A code not in it (UNAVAILABLE, DEADLINE_EXCEEDED,
# INTERNAL, UNKNOWN, CANCELLED, ABORTED, UNIMPLEMENTED) is a callee that could not serve the
# call, which reads as UNAVAILABLE to whoever asked the caller.
MEANINGS: dict[grpc.StatusCode, Meaning] = {
    grpc.StatusCode.INVALID_ARGUMENT: Meaning(InvalidArgument, refusal=True),
    grpc.StatusCode.NOT_FOUND: Meaning(NotFound, refusal=True),
    grpc.StatusCode.ALREADY_EXISTS: Meaning(AlreadyExists, refusal=True),
    grpc.StatusCode.FAILED_PRECONDITION: Meaning(FailedPrecondition, refusal=True),
    grpc.StatusCode.PERMISSION_DENIED: Meaning(PermissionDenied, refusal=True),
    # A region with no storage space left ("region X has no storage space left for ..."): the
    # callee's words are kept, and the same code reaches whoever asked.
    grpc.StatusCode.RESOURCE_EXHAUSTED: Meaning(ResourceExhausted, refusal=True),
    grpc.StatusCode.UNAUTHENTICATED: Meaning(Unauthenticated, refusal=False),
    grpc.StatusCode.DATA_LOSS: Meaning(ChunkCorrupted, refusal=False),
    grpc.StatusCode.OUT_OF_RANGE: Meaning(InvalidArgument, refusal=False),
}
_COULD_NOT_SERVE = Meaning(Unavailable, refusal=False)


def _simulated(exc: grpc.RpcError) -> bool:
    """The callee said the failure is the simulated world's (its trailing metadata)."""
    try:
        trailing = (exc.trailing_metadata() if isinstance(exc, grpc.Call) else None) or ()
    except NotImplementedError:  # an RpcError that is not a real call's
        return False
    return any(key == SIMULATED_FAILURE for key, _ in trailing)


@dataclass(frozen=True)
class Failure:
    """A failed call, read once: its status code and the callee's own words."""

    code: grpc.StatusCode
    details: str
    # The callee failed the call on purpose, for the simulated world (an injected fault, a
    # region outage: issue 13), as its trailing metadata says.
    simulated: bool = False

    @classmethod
    def of(cls, exc: grpc.RpcError, *, busy_is_unavailable: bool = False) -> Failure:
        """`busy_is_unavailable`: gRPC's own concurrent-call limit reads as UNAVAILABLE (it
        passes), not as the callee's RESOURCE_EXHAUSTED."""
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        if (
            busy_is_unavailable
            and code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and details.startswith(BUSY_SERVER)
        ):
            code = grpc.StatusCode.UNAVAILABLE
        return cls(code, details, _simulated(exc))

    @property
    def meaning(self) -> Meaning:
        return MEANINGS.get(self.code, _COULD_NOT_SERVE)

    @property
    def kind(self) -> ErrorKind:
        return self.meaning.kind

    @property
    def refusal(self) -> bool:
        return self.meaning.refusal

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES


@dataclass(frozen=True)
class Retries:
    """How a caller retries an idempotent call: on which codes, how many attempts in all, and
    backing off at random up to `max_wait` seconds between them. Never on a refusal."""

    attempts: int
    max_wait: float
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    multiplier: float = 0.1

    def run(self, once: Callable[[], T], retryable: Callable[[BaseException], bool]) -> T:
        """`once()` until it succeeds, fails with what `retryable` refuses, or runs out of
        attempts; the last failure is raised as it was."""
        retrying = Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.multiplier, max=self.max_wait),
            reraise=True,
        )
        return retrying(once)


@dataclass(frozen=True)
class Watches:
    """How a watch is kept open: one stream at most `timeout` seconds (a longer wait opens
    another), and one cut while the process is briefly unavailable opened again `retries` times
    in a row, `pause` seconds apart."""

    timeout: float
    retries: int
    pause: float


class CallFailed(Exception):
    """Raised inside the core only: a failed call already turned into the caller's error."""


class ClientCore:
    """The calls of one channel: deadlines, retries, the failure read once and turned into the
    caller's error by `to_error(failure, timeout)`, watches, and paging. Every call carries
    `metadata` unless it gives its own."""

    def __init__(
        self,
        *,
        retries: Retries,
        to_error: Callable[[Failure, float], Exception],
        metadata: Iterable[tuple[str, str]] = (),
        busy_is_unavailable: bool = False,
    ) -> None:
        self.retries = retries
        self._to_error = to_error
        self._metadata = tuple(metadata)
        self._busy_is_unavailable = busy_is_unavailable

    def failure(self, exc: grpc.RpcError) -> Failure:
        return Failure.of(exc, busy_is_unavailable=self._busy_is_unavailable)

    def error(self, exc: grpc.RpcError, timeout: float) -> Exception:
        """The caller's error for a failed call."""
        return self._to_error(self.failure(exc), timeout)

    def _meta(self, metadata: Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
        return self._metadata if metadata is None else tuple(metadata)

    def unary(
        self,
        method: Any,
        request: Any,
        *,
        timeout: float,
        retry: bool = False,
        metadata: Iterable[tuple[str, str]] | None = None,
    ) -> Any:
        """One unary call with a deadline. `retry`: the call is idempotent (a read, or a create
        with a request ID), so it is tried again on the retried codes."""
        meta = self._meta(metadata)
        failures: list[Failure] = []

        def once() -> Any:
            try:
                if meta:
                    return method(request, timeout=timeout, metadata=meta)
                return method(request, timeout=timeout)
            except grpc.RpcError as exc:
                failures.append(self.failure(exc))
                raise CallFailed from None

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, CallFailed) and failures[-1].code in self.retries.codes

        try:
            if retry:
                return self.retries.run(once, retryable)
            return once()
        except CallFailed:
            raise self._to_error(failures[-1], timeout) from None

    def client_stream(
        self,
        method: Any,
        requests: Iterable[Any],
        *,
        timeout: float,
    ) -> Any:
        try:
            return method(iter(requests), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self.error(exc, timeout) from None

    def server_stream(self, method: Any, request: Any, *, timeout: float) -> Iterator[Any]:
        """The messages of a server stream; the call is cancelled if the caller stops early."""
        call = method(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self.error(exc, timeout) from None
        finally:
            call.cancel()

    def watch(
        self, method: Any, request: Any, done: Callable[[Any], bool], how: Watches
    ) -> Iterator[Any]:
        """The messages of a Watch call until one is `done` (or the process ends the stream).
        A watch longer than its deadline is opened again, and so is one cut while the process
        is briefly unavailable (a few times in a row); the call is cancelled if the caller
        stops."""
        retries = 0
        while True:
            call = method(request, timeout=how.timeout, metadata=self._metadata)
            try:
                for message in call:
                    retries = 0
                    yield message
                    if done(message):
                        return
                return
            except grpc.RpcError as exc:
                failure = self.failure(exc)
                if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if failure.code == grpc.StatusCode.UNAVAILABLE and retries < how.retries:
                    retries += 1
                    time.sleep(how.pause)
                    continue
                raise self._to_error(failure, how.timeout) from None
            finally:
                call.cancel()

    def list_all(self, method: Any, request: Any, field: str, *, timeout: float) -> list[Any]:
        """Every item of a List call, page after page (`field`: the answer's repeated field);
        each page is a read, retried. `request` is copied, never changed."""
        items: list[Any] = []
        token = ""
        while True:
            page = type(request)()
            page.CopyFrom(request)
            page.page_size = LIST_PAGE_SIZE
            page.page_token = token
            answer = self.unary(method, page, timeout=timeout, retry=True)
            items.extend(getattr(answer, field))
            token = answer.next_page_token
            if not token:
                return items
