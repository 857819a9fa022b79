"""Relaying chunk streams between two nodes without parsing them: the length of a chunk's data
read from the raw message's first bytes, and the guard that cuts a stream that stalls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def chunk_data_length(raw: bytes | memoryview) -> int:
    """The length of the `data` field of a serialized Chunk, read from its few header bytes
    (so that progress counts chunk bytes as the manifest does, without parsing the message)."""
    i, n = 0, len(raw)
    while i < n:
        key, i = _varint(raw, i)
        if key & 7 != 2:  # only length-delimited fields in a Chunk
            return n
        length, i = _varint(raw, i)
        if key >> 3 == 2:
            return length
        i += length
    return 0


def batch_data_lengths(raw: bytes) -> list[int]:
    """The data length of each Chunk of a serialized ChunkBatch (field 1, repeated), read from
    their headers without parsing the message."""
    view = memoryview(raw)
    lengths = []
    i, n = 0, len(view)
    while i < n:
        key, i = _varint(view, i)
        if key & 7 != 2:  # only length-delimited fields in a ChunkBatch
            break
        length, i = _varint(view, i)
        if key >> 3 == 1:
            lengths.append(chunk_data_length(view[i : i + length]))
        i += length
    return lengths


def _varint(raw: bytes | memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


# --- stall detection ---------------------------------------------------------------------------


class StallGuard:
    """Cancels a stream that moves nothing for `timeout` seconds while it is still sending, or
    whose answer has not come `answer_timeout` seconds after the last message was sent (a
    paused or cut-off node would otherwise hold it until its deadline), or at once when `stop`
    is set. Watches from its own thread; `touch()` on every message."""

    def __init__(self, timeout: float, stop: threading.Event | None, answer_timeout: float) -> None:
        self._timeout = timeout
        self._answer_timeout = answer_timeout
        self._stop = stop
        self._last = time.monotonic()
        self._sending = True
        self._done = threading.Event()
        self._cancels: list[Callable[[], Any]] = []
        self.fired: str = ""  # "stalled", "unanswered" or "stopped"
        self._thread = threading.Thread(target=self._watch, name="stall-guard", daemon=True)

    def on_fire(self, cancel: Callable[[], Any]) -> None:
        self._cancels.append(cancel)

    def touch(self) -> None:
        self._last = time.monotonic()

    def sending_done(self) -> None:
        self._last = time.monotonic()
        self._sending = False

    def __enter__(self) -> StallGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(0.25):
            if self._stop is not None and self._stop.is_set():
                self._fire("stopped")
                return
            limit = self._timeout if self._sending else self._answer_timeout
            if time.monotonic() - self._last > limit:
                self._fire("stalled" if self._sending else "unanswered")
                return

    def _fire(self, why: str) -> None:
        self.fired = why
        for cancel in self._cancels:
            cancel()
