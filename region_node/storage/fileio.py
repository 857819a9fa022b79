"""Small file primitives: writes that write all or raise, hole punching, page-cache hygiene,
and telling a full filesystem apart from other failures."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sqlite3
from collections.abc import Sequence

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Frees the blocks of [offset, offset+length) (they then read as zeros). Returns False
    where the filesystem cannot punch holes; the caller then writes zeros if it must."""
    if length <= 0:
        return True
    result = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    return bool(result == 0)


def zero_range(fd: int, offset: int, length: int, zeros: bytes) -> None:
    """Makes [offset, offset+length) read as zeros, freeing the blocks where possible."""
    if punch_hole(fd, offset, length):
        return
    end = offset + length
    while offset < end:
        n = min(len(zeros), end - offset)
        write_all(fd, zeros[:n], offset)
        offset += n


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Writes every byte of `data` at `offset` or raises: a short count (a filesystem that
    filled up mid-write) is continued, and a write that makes no progress is ENOSPC."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
        offset += written


def writev_all(fd: int, pieces: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    """`write_all` of several buffers laid end to end (one system call when it all fits)."""
    total = sum(len(p) for p in pieces)
    written = os.pwritev(fd, pieces, offset)
    if written == total:
        return
    joined = b"".join(bytes(p) for p in pieces)
    write_all(fd, memoryview(joined)[written:], offset + written)


def out_of_space(exc: BaseException) -> bool:
    """Whether `exc` says the filesystem (or the catalog on it) has no room left."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            "database or disk is full" in str(exc)
        )
    return False


def drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Tells the kernel we are done with these pages (clean ones leave the page cache), so that
    streaming a large disk does not grow memory. See ../shared/PERFORMANCE.md."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
