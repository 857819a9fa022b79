"""Policy schedules: iCalendar recurrence rules (RFC 5545 RRULE), as the real service's API
takes them, evaluated in the policy's time zone. python-dateutil parses them; this module only
holds them to the service's limits: FREQ=DAILY, or FREQ=WEEKLY with BYDAY, always with BYHOUR
and BYMINUTE; at least one hour between two runs (across midnight too); at most 24 runs a day."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rrulestr

from csbs.errors import InvalidArgument

ALLOWED_KEYS = {"FREQ", "BYDAY", "BYHOUR", "BYMINUTE"}
MIN_GAP = timedelta(hours=1)
MAX_RUNS_A_DAY = 24
# A fixed Monday to lay a week of runs out on, for the checks.
_PROBE_START = datetime(2024, 1, 1)


@dataclass(frozen=True)
class Schedule:
    rrule: str
    timezone: str  # IANA name

    def next_after(self, instant: datetime) -> datetime:
        """The first run strictly after `instant` (aware), in UTC."""
        zone = ZoneInfo(self.timezone)
        local = instant.astimezone(zone)
        # The rule starts at the day's midnight, so BYHOUR/BYMINUTE fix every occurrence.
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        rule = rrulestr(self.rrule, dtstart=start.replace(tzinfo=None))
        assert isinstance(rule, rrule)
        naive: datetime | None = rule.after(local.replace(tzinfo=None), inc=False)
        if naive is None:  # pragma: no cover - a valid daily or weekly rule never ends
            raise InvalidArgument(f"schedule {self.rrule!r} has no next run")
        return naive.replace(tzinfo=zone).astimezone(UTC)


def validate_schedule(rule_text: str, timezone: str, field: str) -> Schedule:
    """The schedule, or INVALID_ARGUMENT naming the field and the limit it breaks."""
    rule_text = rule_text.strip()
    if rule_text.upper().startswith("RRULE:"):
        rule_text = rule_text[len("RRULE:") :]
    if not rule_text:
        raise InvalidArgument(f"{field}.rrule is required, e.g. FREQ=DAILY;BYHOUR=2;BYMINUTE=0")
    keys = {}
    for part in rule_text.split(";"):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"{field}.rrule: {part!r} is not KEY=VALUE")
        keys[key.upper()] = value.upper()
    unknown = sorted(set(keys) - ALLOWED_KEYS)
    if unknown:
        raise InvalidArgument(
            f"{field}.rrule: {', '.join(unknown)} not allowed; a schedule takes only FREQ, "
            "BYDAY, BYHOUR and BYMINUTE"
        )
    freq = keys.get("FREQ")
    if freq not in ("DAILY", "WEEKLY"):
        raise InvalidArgument(f"{field}.rrule: FREQ must be DAILY or WEEKLY, not {freq!r}")
    if freq == "WEEKLY" and "BYDAY" not in keys:
        raise InvalidArgument(f"{field}.rrule: FREQ=WEEKLY needs BYDAY (e.g. BYDAY=MO,TH)")
    for key in ("BYHOUR", "BYMINUTE"):
        if key not in keys:
            raise InvalidArgument(f"{field}.rrule: {key} is required")
    try:
        zone = ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "Asia", too long
        raise InvalidArgument(f"{field}.timezone {timezone!r} is not an IANA time zone") from exc
    try:
        rule = rrulestr(rule_text, dtstart=_PROBE_START)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: BYHOUR=10**20
        raise InvalidArgument(f"{field}.rrule {rule_text!r}: {exc}") from exc
    runs = list(rule.between(_PROBE_START, _PROBE_START + timedelta(days=15), inc=True))
    if not runs:
        raise InvalidArgument(f"{field}.rrule {rule_text!r} never runs")
    per_day: dict[object, int] = {}
    for run in runs:
        per_day[run.date()] = per_day.get(run.date(), 0) + 1
    if max(per_day.values()) > MAX_RUNS_A_DAY:
        raise InvalidArgument(
            f"{field}.rrule: {max(per_day.values())} runs a day, at most {MAX_RUNS_A_DAY}"
        )
    for earlier, later in itertools.pairwise(runs):
        if later - earlier < MIN_GAP:
            raise InvalidArgument(
                f"{field}.rrule: runs at {earlier:%a %H:%M} and {later:%a %H:%M} are "
                f"{int((later - earlier).total_seconds() // 60)} minutes apart; at least one "
                "hour must pass between two runs (across midnight too)"
            )
    return Schedule(rule_text, zone.key)
