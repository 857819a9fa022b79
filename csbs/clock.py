"""The clock every process takes timestamps from. Nodes never call time.time() for a timestamp:
they are handed a Clock, so that the cluster clock can drive them in simulated mode."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class WallClock:
    """Follows the machine's wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock:
    """Moves only when set, and never backwards."""

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, instant: datetime) -> datetime:
        """Moves the clock to `instant` unless that is in its past; returns the new now."""
        with self._lock:
            instant = instant.astimezone(UTC)
            if instant > self._now:
                self._now = instant
            return self._now
