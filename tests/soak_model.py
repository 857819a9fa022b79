"""The model the seeded fault test of a region node (tests/node_soak.py) holds the node to:
what every disk holds (a page at a time, with the pages a failed write may or may not have
changed), each backup's point in time, and the report of a run."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field

from csbs.v1 import region_node_pb2 as pb

PAGE = 4096
CREATING = pb.BACKUP_STATUS_CREATING


class Failure(Exception):
    """A rule the node broke: ends the run."""


class Refused(Exception):
    """A call answered with a status code it may answer under faults (counted)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


@dataclass
class SoakReport:
    seed: int
    seconds: float
    ops: dict[str, int] = field(default_factory=dict)  # calls, by method
    codes: dict[str, int] = field(default_factory=dict)  # answers, by status code
    # The first answers with a code the soak's own calls should never earn (they send valid
    # input): "method: CODE: details", so that a run's figures say where they came from.
    odd_answers: list[str] = field(default_factory=list)
    kills: int = 0
    fills: int = 0
    writes_acknowledged: int = 0
    writes_failed: int = 0
    disks_verified: int = 0
    backups_verified: int = 0
    unanswered: int = 0  # creates never answered (what they made may exist)
    pack_bytes_left: int = 0  # allocated by the packs at the end (zeros only)
    elapsed: float = 0.0

    def json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class SoakFailed(AssertionError):
    def __init__(self, message: str, report: SoakReport) -> None:
        super().__init__(message)
        self.report = report


def _page(data: bytes | bytearray, p: int) -> bytes:
    return bytes(data[p * PAGE : (p + 1) * PAGE])


@dataclass
class DiskModel:
    """What a disk holds: `data`, except the pages in `maybe`, each one of a set of contents."""

    data: bytearray
    maybe: dict[int, set[bytes]] = field(default_factory=dict)

    def copy(self) -> DiskModel:
        return DiskModel(bytearray(self.data), {p: set(c) for p, c in self.maybe.items()})

    def _contents(self, p: int) -> set[bytes]:
        return self.maybe.get(p) or {_page(self.data, p)}

    def _set(self, p: int, contents: set[bytes]) -> None:
        if len(contents) > 1:
            self.maybe[p] = contents
        else:
            self.maybe.pop(p, None)
            self.data[p * PAGE : (p + 1) * PAGE] = next(iter(contents))

    def write(self, offset: int, data: bytes, sure: bool) -> None:
        """A write the node acknowledged (`sure`), or one that failed: old or new, per page."""
        end = offset + len(data)
        if sure and not self.maybe:
            self.data[offset:end] = data
            return
        for p in range(offset // PAGE, (end - 1) // PAGE + 1):
            lo, hi = max(offset, p * PAGE), min(end, (p + 1) * PAGE)
            old = self._contents(p)
            piece, at = data[lo - offset : hi - offset], lo - p * PAGE
            new = {c[:at] + piece + c[at + len(piece) :] for c in old}
            self._set(p, new if sure else old | new)

    def either(self, other: DiskModel) -> None:
        """This disk or `other`, page by page (a restore that may or may not have run)."""
        for p in range(len(self.data) // PAGE):
            if (mine := self._contents(p)) != (theirs := other._contents(p)):
                self._set(p, mine | theirs)

    def check(self, got: bytes) -> str:
        """What is wrong with `got` as this disk ("" if nothing, and then it is adopted)."""
        if len(got) != len(self.data):
            return f"{len(got)} bytes read, the disk has {len(self.data)}"
        expected = bytearray(self.data)
        for p, contents in self.maybe.items():  # the page read if it is one of them
            page = _page(got, p)
            expected[p * PAGE : (p + 1) * PAGE] = page if page in contents else min(contents)
        if expected != got:
            bad = [p for p in range(len(got) // PAGE) if _page(expected, p) != _page(got, p)]
            zeros = " (it reads as zeros)" if _page(got, bad[0]) == bytes(PAGE) else ""
            return f"{len(bad)} pages differ from the model, the first at {bad[0] * PAGE}{zeros}"
        self.data[:] = got
        self.maybe.clear()
        return ""


@dataclass(eq=False)
class ServerModel:
    server_id: str
    disks: list[DiskModel]
    lock: threading.Lock = field(default_factory=threading.Lock)
    tainted: str = ""  # why its disks are not known any more, if they are not


@dataclass(eq=False)
class BackupModel:
    backup_id: str
    server_id: str
    disks: dict[int, DiskModel]  # its point in time, by disk index (never changed)
    epoch: int  # the fault epoch when it started
    replica: bool = False
    status: int = CREATING  # as last seen
