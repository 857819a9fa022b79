"""How values read on a page: sizes, times, the short word of a status, a percentage. Used as
Jinja filters."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(value: int) -> str:
    amount = float(value)
    for unit in _UNITS:
        if amount < 1024 or unit == _UNITS[-1]:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


def whole_number(text: str, most: int = UINT32_MAX) -> int | None:
    """A form's or query's whole number from 0 to `most`, else None: ASCII digits only ("²" is
    a digit to str.isdigit, not to int()), and never a string too long for int()."""
    text = text.strip()
    if text.isascii() and text.isdigit() and len(text) <= 20 and int(text) <= most:
        return int(text)
    return None


def state(enum: Any, value: int) -> str:
    """BACKUP_STATUS_AVAILABLE -> "available": the word the catalog keys by. A value this
    console does not know (a newer cluster's) reads "unknown", never an error page."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "unknown"
    for prefix in (
        "BACKUP_STATUS_",
        "REPLICATION_JOB_STATUS_",
        "SERVER_STATUS_",
        "REPLICATION_RECORD_STATUS_",
        "REPLICATION_WAY_",
        "IMAGE_STATUS_",
        "POLICY_RUN_KIND_",
        "POLICY_RUN_TRIGGER_",
        "POLICY_RUN_STATUS_",
    ):
        if name.startswith(prefix):
            return name[len(prefix) :].lower()
    return name.lower()


def percent(done: int, total: int) -> int:
    if total <= 0:
        return 0
    return min(100, done * 100 // total)
