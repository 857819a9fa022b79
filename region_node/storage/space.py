"""Room to make room: a file of reserved space in the node's data directory.

When the filesystem fills up, SQLite needs a little space even to delete (its WAL grows before
it shrinks), so a full node could refuse the very calls that would free space. The node keeps
`RESERVE_BYTES` allocated in a file of its own; a deletion (or marking failed work) that hits a
full disk gives the reserve back and tries again, and the reserve is taken again once the
filesystem has room for it twice over."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_BYTES = 16 << 20


class SpaceReserve:
    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self._path = path
        self._size = size
        self._lock = threading.Lock()
        self.held = path.exists() and path.stat().st_blocks * 512 >= size
        self.ensure()

    def ensure(self) -> None:
        """Takes the reserve if it is not held and the filesystem has room for it twice over."""
        if self.held:
            return
        with self._lock:
            if self.held:
                return
            stats = os.statvfs(self._path.parent)
            if stats.f_bavail * stats.f_frsize < 2 * self._size:
                return
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self._size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._path.unlink(missing_ok=True)
                log.warning("could not reserve %d bytes of room: %s", self._size, exc)
                return
            self.held = True

    def release(self) -> bool:
        """Gives the reserved space back to the filesystem. Returns whether there was any."""
        with self._lock:
            if not self.held:
                return False
            self._path.unlink(missing_ok=True)
            self.held = False
        log.warning("the filesystem is full: the reserved room was given back to make room")
        return True
