"""google.protobuf.Timestamp to and from aware datetimes, for every process's convert module."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from csbs.errors import InvalidArgument


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def instant(ts: Timestamp, field: str) -> datetime:
    """A request's timestamp as an aware datetime, or INVALID_ARGUMENT naming the field when it
    is no instant at all (seconds outside years 1-9999, nanos outside 0-999999999)."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(
            f"{field}: seconds {ts.seconds} and nanos {ts.nanos} are not a valid timestamp "
            "(from 0001-01-01 to 9999-12-31, nanos 0 to 999999999)"
        ) from exc
