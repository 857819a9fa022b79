"""Lets watchers wait for a resource to change instead of polling the catalog in a loop."""

from __future__ import annotations

import threading
from collections import defaultdict


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: dict[str, int] = defaultdict(int)

    def version(self, key: str) -> int:
        with self._cond:
            return self._versions[key]

    def changed(self, key: str) -> None:
        with self._cond:
            self._versions[key] += 1
            self._cond.notify_all()

    def wait(self, key: str, seen: int, timeout: float) -> int:
        """Waits until the key's version passes `seen` or the timeout ends; returns the version."""
        with self._cond:
            self._cond.wait_for(lambda: self._versions[key] != seen, timeout)
            return self._versions[key]
