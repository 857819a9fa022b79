"""`python -m csbs.cli.demo_files [DIR]`: writes the two files the quickstart (and `make demo`)
puts on the demo server's disks, `system-disk.txt` (32 MiB) and `data-disk.txt` (16 MiB), so
that a user following the README by hand gets the same bytes, and the same SHA-256, as shown."""

from __future__ import annotations

import sys
from pathlib import Path

DEMO_MIB = 32
MIB = 1 << 20
LINE = 64  # bytes of one line of the recognisable data


def recognisable(label: str, mib: int) -> bytes:
    """`mib` MiB of text lines that say what they are and where they belong: every MiB differs
    from every other, so that no chunk of the demo is stored once for two."""
    lines_per_mib = MIB // LINE
    return b"".join(
        f"csbs-sim demo {label} MiB {m:04d} line {i:05d}".ljust(LINE - 1).encode() + b"\n"
        for m in range(mib)
        for i in range(lines_per_mib)
    )


def write_demo_files(directory: Path, mib: int = DEMO_MIB) -> tuple[Path, Path]:
    """`mib` MiB for the system disk, half that for the data disk."""
    system_file = directory / "system-disk.txt"
    data_file = directory / "data-disk.txt"
    system_file.write_bytes(recognisable("system disk", mib))
    data_file.write_bytes(recognisable("data disk", mib // 2))
    return system_file, data_file


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else Path.cwd()
    system_file, data_file = write_demo_files(directory)
    print(f"wrote {system_file.name} ({DEMO_MIB} MiB) and {data_file.name} ({DEMO_MIB // 2} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
