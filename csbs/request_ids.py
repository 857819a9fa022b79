"""The request ID that follows one request across the processes (issue 14), so that one grep
over the logs finds everything a request caused.

A client may send it as `x-request-id` metadata; otherwise the first process that sees the call
makes one. The server edge (csbs.observed_calls) binds it for the call's thread, the log
formatter (csbs.logs) writes it on every line, and the coordinator's calls to the nodes carry
it on (csbs.clients). Work that outlives its call keeps its own: a replication job the ID of the
request that made it (stored with the job), a policy run one of its own. Plain Python: a
context variable, no gRPC."""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

REQUEST_ID_METADATA = "x-request-id"
# What a client may send: anything else (too long, odd characters) is replaced by a new ID, so
# that a log line or a header never carries what the client made up beyond this.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

_current: ContextVar[str] = ContextVar("csbs_request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted(sent: str | bytes | None) -> str:
    """The ID a client sent if it is acceptable, else a new one."""
    if isinstance(sent, bytes):
        sent = sent.decode("ascii", errors="replace")
    return sent if sent and _ACCEPTED.fullmatch(sent) else new_request_id()


def current() -> str:
    """The request ID of the work this thread does ('' when none is bound)."""
    return _current.get()


@contextmanager
def bound(request_id: str) -> Iterator[str]:
    """Binds `request_id` for the work done inside the block (in this thread)."""
    token = _current.set(request_id)
    try:
        yield request_id
    finally:
        _current.reset(token)


class CarryingExecutor(ThreadPoolExecutor):
    """A thread pool whose work runs under the request ID bound where it was submitted."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def outgoing() -> tuple[tuple[str, str], ...]:
    """The metadata that carries the bound request ID on to a call this process makes."""
    request_id = _current.get()
    return ((REQUEST_ID_METADATA, request_id),) if request_id else ()
