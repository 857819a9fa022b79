"""A server's disks as real sparse files, with the write tracking that makes backups
incremental and the copy-on-write that makes them point-in-time.

Each disk has a gate: a write holds it while it durably marks its chunks as written in the
current epoch, preserves chunks a running backup has not read yet, and writes. A backup starts
under the gates of its disks: it bumps each disk's epoch and takes the set of chunks written
since its base backup, so writes that arrive after that point are not in it, and not lost."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from csbs.errors import FailedPrecondition

STRIPES = 64


class BackupSession:
    """The chunks of one disk a running backup has still to read. Whoever takes a chunk out of
    `todo` (the backup's reader, or a writer about to overwrite it) reads it and hands it to
    `capture`, under the chunk's stripe lock."""

    def __init__(
        self,
        todo: set[int],
        capture: Callable[[int, memoryview], None],
    ) -> None:
        self.todo = todo
        self.capture = capture
        self.locks = [threading.Lock() for _ in range(STRIPES)]
        # A chunk taken out of `todo` whose capture failed (a writer's copy-on-write on a full
        # disk): the backup lacks it and must end in error, never available.
        self.failure: BaseException | None = None
        # Writers' copy-on-write captures still running: a chunk they took out of `todo` is in
        # the backup only once its capture is done, so the backup waits for them to commit.
        self._capturing = 0
        self._captured = threading.Condition()

    def capturing(self) -> None:
        """A writer took a chunk out of `todo` (under its stripe lock) and will capture it."""
        with self._captured:
            self._capturing += 1

    def captured(self) -> None:
        with self._captured:
            self._capturing -= 1
            self._captured.notify_all()

    def wait_for_captures(self) -> None:
        """Until every writer's capture that started has ended (well or not)."""
        with self._captured:
            self._captured.wait_for(lambda: not self._capturing)


class DiskGone(FailedPrecondition):
    """I/O on a disk whose server has been deleted (or is being deleted)."""

    def __init__(self, disk_id: str) -> None:
        super().__init__(f"disk {disk_id} is gone: its server has been deleted")


class DiskState:
    def __init__(self, disk_id: str, path: Path, size_bytes: int, epoch: int) -> None:
        self.disk_id = disk_id
        self.path = path
        self.size_bytes = size_bytes
        self.gate = threading.Lock()
        self.epoch = epoch
        self.marked: set[int] = set()  # chunks already marked written in this epoch
        self.session: BackupSession | None = None
        self.busy = ""  # non-empty while a restore owns the disk: why writes are refused
        self._fd: int | None = None
        self._fd_lock = threading.Lock()  # a leaf
        self._users = 0  # I/O in progress on the descriptor
        self._close_when_idle = False
        self.removed = False

    @contextlib.contextmanager
    def io(self) -> Iterator[int]:
        """The disk file's descriptor, kept open while the block runs: a deletion or close meanwhile
        closes it only once the last user is done, so a descriptor number is never used after
        it was closed (and perhaps reused for another file). A disk removed is DiskGone."""
        with self._fd_lock:
            if self.removed:
                raise DiskGone(self.disk_id)
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDWR)
                except FileNotFoundError as exc:
                    raise DiskGone(self.disk_id) from exc
            self._users += 1
            fd = self._fd
        try:
            yield fd
        finally:
            with self._fd_lock:
                self._users -= 1
                if not self._users and self._close_when_idle:
                    self._close_now()

    def create_file(self) -> None:
        """A new, sparse disk: no block is allocated until written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, self.size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._fd_lock:
            if self._users:
                self._close_when_idle = True
            else:
                self._close_now()

    def _close_now(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._close_when_idle = False

    def remove_file(self) -> None:
        """Deletes the disk's file; I/O still running on it ends first, later I/O is DiskGone."""
        with self._fd_lock:
            self.removed = True
        self.close()
        self.path.unlink(missing_ok=True)
