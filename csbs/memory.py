"""What keeps a process's resident memory near what its code holds (issue 12). glibc's
allocator gives each thread that allocates at once an arena of its own (up to 8 per core) and
keeps freed memory in them for later: a node that served 16 concurrent 512 MiB WriteDisk
streams stayed at 3.5 GB after they ended. So every csbs process allows ARENAS arenas, and
gives freed memory back to the kernel every TRIM_EVERY_SECONDS (`malloc_trim`, which returns
whole free pages of every arena). On a C library without these calls (not glibc), nothing
changes."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

ARENAS = 2
TRIM_EVERY_SECONDS = 5.0
_M_ARENA_MAX = -8  # from glibc's malloc.h

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def limit_arenas() -> bool:
    """At a process's start, before its threads: at most ARENAS allocator arenas."""
    libc = _glibc()
    if libc is None or not libc.mallopt(_M_ARENA_MAX, ARENAS):
        log.info("the C library does not take mallopt(M_ARENA_MAX): memory is as it allocates")
        return False
    return True


def give_back() -> None:
    """Returns the allocator's free pages to the kernel (cheap when there are few)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class StreamSlots:
    """A bound on the large incoming streams a process reads at once (issue 12). A stream takes
    a slot before it asks gRPC for its first message and keeps it to its end; a stream waiting
    for a slot is not read, so its sender is held back by flow control and gRPC holds little of
    it. Measured: each WriteDisk stream being read held 20 to 45 MB (the message, its copies
    while parsed, the data gRPC has let in ahead), so 16 streams took a node to 380 MB; letting
    every stream take turns a message at a time did not help (a stream read once keeps that
    much while it waits its turn). Slots go first come, first served. A stream whose sender
    stalls keeps its slot, so: when no stream holding a slot has received a message for
    `stall_seconds`, those waiting go on without one (the bound gives way, progress does not)."""

    def __init__(self, slots: int, stall_seconds: float) -> None:
        self._changed = threading.Condition()
        self._free = slots
        self._waiting: deque[object] = deque()
        self._moved_at = time.monotonic()
        self._stall_seconds = stall_seconds
        self.went_without = 0  # streams that went on without a slot

    def each(self, messages: Iterator[T]) -> Generator[T, None, None]:
        """`messages`, read once the stream has a slot (or its wait found the holders stalled)."""
        held = self._take()
        try:
            for message in messages:
                if held:
                    self._moved_at = time.monotonic()
                yield message
        finally:
            if held:
                self._give()

    def _take(self) -> bool:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            since = time.monotonic()
            try:
                while not (self._free and self._waiting[0] is ticket):
                    still = time.monotonic() - max(since, self._moved_at)
                    if still >= self._stall_seconds:
                        self.went_without += 1
                        log.info(
                            "a stream goes on without a slot: the streams holding them stalled"
                        )
                        return False
                    self._changed.wait(self._stall_seconds - still)
                self._free -= 1
                return True
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()

    def _give(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()
