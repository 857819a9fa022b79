"""Small file primitives: durable atomic writes, hole punching, page-cache hygiene."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

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
        os.pwrite(fd, zeros[:n], offset)
        offset += n


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
