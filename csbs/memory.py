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

log = logging.getLogger(__name__)

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
