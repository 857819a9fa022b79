"""How the command line prints: aligned tables and field lists for people (rich), or with `--json`
exactly the resource or the list of resources as the .proto's JSON, for scripts. Hints and
progress go to stderr, so that stdout holds only the answer."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table
from rich.text import Text

# A console that is not a terminal gets this width, so that a table piped into a file or another
# program is never wrapped (rich would otherwise assume 80 columns).
UNBOUNDED_WIDTH = 10_000

# The messages commands print, seen by whoever runs commands in-process (`csbs demo`), which
# needs the IDs of what the commands it shows created.
_printed: contextvars.ContextVar[list[object] | None] = contextvars.ContextVar(
    "csbs_cli_printed", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[list[object]]:
    """Collects every answer the commands run inside it print (human or JSON): messages, and
    the few answers that are plain values."""
    seen: list[object] = []
    token = _printed.set(seen)
    try:
        yield seen
    finally:
        _printed.reset(token)


def _record(*messages: object) -> None:
    seen = _printed.get()
    if seen is not None:
        seen.extend(messages)


def console(stderr: bool = False) -> Console:
    """A rich console on stdout or stderr; full width when it is not a terminal."""
    made = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not made.is_terminal:
        made = Console(stderr=stderr, highlight=False, soft_wrap=False, width=UNBOUNDED_WIDTH)
    return made


# --- formatting --------------------------------------------------------------------------------


def word(enum_type: Any, value: int) -> str:
    """An enum value as the product says it: BACKUP_STATUS_AVAILABLE is `available`."""
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    prefix = enum_type.Name(0).removesuffix("UNSPECIFIED")
    return name.removeprefix(prefix).lower().replace("_", " ")


def size(n: int) -> str:
    """Bytes in binary units: 16 MiB, 1.5 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{n} B"
            return f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError("unreachable")


def when(ts: Timestamp) -> str:
    """A timestamp in UTC to the second, or empty if it was never set."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    moment = dt.datetime.fromtimestamp(ts.seconds, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def to_json(message: Message) -> dict[str, Any]:
    """A message as the .proto's JSON mapping, with the .proto's field names and every field
    (a zero or false one too, so that scripts never miss a key)."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


# --- printing ----------------------------------------------------------------------------------

# Columns of IDs, never wrapped: an ID is copied whole.
_WHOLE = ("ID", "BACKUP", "SERVER", "REPLICA", "RUN", "JOB")


class Printer:
    """Prints a command's answer: for people, or as JSON with `--json`."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode
        self.out = console()
        self.err = console(stderr=True)

    # -- JSON ------------------------------------------------------------------------------------
    def json_value(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def show(self, message: Message, human: Callable[[], None]) -> None:
        """One resource: as JSON, or as `human` prints it."""
        _record(message)
        if self.json:
            self.json_value(to_json(message))
        else:
            human()

    def show_value(self, value: dict[str, Any], human: Callable[[], None]) -> None:
        """An answer that is not one of the contract's messages (a digest of a disk's bytes)."""
        _record(value)
        if self.json:
            self.json_value(value)
        else:
            human()

    def show_list(self, messages: Sequence[Message], human: Callable[[], None]) -> None:
        """A list of resources: a JSON array of them, or as `human` prints it."""
        _record(*messages)
        if self.json:
            self.json_value([to_json(m) for m in messages])
        else:
            human()

    # -- people ----------------------------------------------------------------------------------
    def table(self, columns: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> None:
        """Aligned columns under a header; `empty` is said instead when there are no rows."""
        rows = list(rows)
        if not rows:
            self.line(empty)
            return
        table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
        for column in columns:
            table.add_column(column, no_wrap=column in _WHOLE)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self._print(table)

    def fields(self, pairs: Iterable[tuple[str, str]]) -> None:
        """A resource's fields, one per line, names aligned; empty values are left out."""
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for name, value in pairs:
            if value:
                grid.add_row(name, Text(value))
        self._print(grid)

    def line(self, text: str = "") -> None:
        self._print(Text(text))

    def hint(self, text: str) -> None:
        """Advice about what to do next: on stderr, never in the way of the answer."""
        sys.stdout.flush()
        self.err.print(Text(text, style="dim"))

    def _print(self, renderable: Any) -> None:
        if self.out.is_terminal:
            self.out.print(renderable)
            return
        # Not a terminal: no trailing padding on the lines a table pads to its width.
        with self.out.capture() as captured:
            self.out.print(renderable)
        lines = [line.rstrip() for line in captured.get().splitlines()]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
