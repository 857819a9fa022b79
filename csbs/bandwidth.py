"""Bandwidths as people write them ("100 MB/s", "100Mbit/s", "1.5 GB/s", "12500000"), read into
bytes a second, and written back: one reading for the config file and the command line."""

from __future__ import annotations

import re

# Decimal units, as link speeds are sold: 1 MB/s = 10**6 bytes/s, 1 Mbit/s = 125,000 bytes/s.
_UNITS = {
    "": 1,
    "b/s": 1,
    "kb/s": 10**3,
    "mb/s": 10**6,
    "gb/s": 10**9,
    "bit/s": 1 / 8,
    "kbit/s": 10**3 / 8,
    "mbit/s": 10**6 / 8,
    "gbit/s": 10**9 / 8,
    "kbps": 10**3 / 8,
    "mbps": 10**6 / 8,
    "gbps": 10**9 / 8,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z/]*)\s*$")


def parse_bandwidth(text: str) -> int:
    """Bytes a second; 0 (or "unlimited") is unlimited. ValueError names what is accepted."""
    if text.strip().lower() in ("0", "unlimited"):
        return 0
    found = _PATTERN.match(text.lower())
    if found is None or found.group(2) not in _UNITS:
        raise ValueError(
            f"bandwidth {text!r}: a number of bytes a second, or with a unit: "
            "B/s, kB/s, MB/s, GB/s, bit/s, kbit/s, Mbit/s, Gbit/s (decimal), or 'unlimited'"
        )
    value = float(found.group(1)) * _UNITS[found.group(2)]
    if value < 1:
        raise ValueError(f"bandwidth {text!r}: at least 1 byte a second (or 'unlimited')")
    return int(value)


def format_bandwidth(bytes_per_second: int) -> str:
    if not bytes_per_second:
        return "unlimited"
    for unit, size in (("GB/s", 10**9), ("MB/s", 10**6), ("kB/s", 10**3)):
        if bytes_per_second >= size:
            return f"{bytes_per_second / size:g} {unit}"
    return f"{bytes_per_second} B/s"
