"""Small real filesystems for the tests that fill one up: a tmpfs mounted on a directory (and
always unmounted), and a file that takes every free block of it until removed. Mounting needs
root."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20


@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` mounted on `path`, unmounted whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


class Filler:
    """A file that takes every free block of the filesystem, until `remove()`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler-of-the-test"

    def fill(self) -> int:
        block = b"\xa5" * MIB
        written = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
            while True:  # the last partial megabyte too
                try:
                    n = os.write(fd, b"\xa5" * 4096)
                except OSError:
                    break
                if n <= 0:
                    break
                written += n
        finally:
            os.close(fd)
        return written

    def shrink(self, by: int) -> None:
        size = self.path.stat().st_size
        os.truncate(self.path, max(0, size - by))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
