"""A region's storage capacity (issue 13): the bytes of chunk records the store holds (indexed,
pending or being written: data and header each) against the most the operator lets it hold.
A record beyond it is refused with `CapacityReached`, an ENOSPC, so that every writer meets it
exactly as it meets a full filesystem and gives back what it wrote, as then. Lowering the
capacity below what is held refuses new records and touches nothing held.

Only the chunk store counts: a region's capacity is its backup vault's, and server disks are
the servers' own storage, not backups (a real cloud's backup capacity says nothing of them)."""

from __future__ import annotations

import errno
import os
import threading

from csbs.errors import bytes_text


class CapacityReached(OSError):
    """A record the region's capacity has no room for. An ENOSPC, so that it takes the path of
    a full filesystem everywhere; `why` names the capacity and its use."""

    def __init__(self, capacity: int, used: int) -> None:
        self.why = (
            f"its storage capacity is {bytes_text(capacity)}, of which {bytes_text(used)} is used"
        )
        super().__init__(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {self.why}")
        self.capacity = capacity
        self.used = used


class Capacity:
    """The count and the limit. Its lock is a leaf (taken under the chunk store's)."""

    def __init__(self, used: int) -> None:
        self._lock = threading.Lock()
        self._limit = 0  # 0: no limit
        self._used = used

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self._limit = limit

    def usage(self) -> tuple[int, int]:
        """(the limit, 0 for none; the bytes held)."""
        with self._lock:
            return self._limit, self._used

    def full(self) -> CapacityReached | None:
        """The refusal any new record would meet now, or None while there is room."""
        with self._lock:
            if self._limit and self._used >= self._limit:
                return CapacityReached(self._limit, self._used)
        return None

    def take(self, n: int) -> None:
        """Counts `n` bytes more, or raises CapacityReached if they do not fit."""
        with self._lock:
            if self._limit and self._used + n > self._limit:
                raise CapacityReached(self._limit, self._used)
            self._used += n

    def give_back(self, n: int) -> None:
        with self._lock:
            self._used -= n
