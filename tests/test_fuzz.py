"""Every RPC of the region nodes (RegionNode, RegionNodeInternal, RegionNodeAdmin) and of the
coordinator (Coordinator, CoordinatorAdmin), driven with arbitrary well-formed messages against a
real cluster on the simulated clock.

Messages are drawn generically from each message's descriptor (`strategy_for`): any strings,
huge and zero integers, random bytes, unknown enum numbers, repeated fields and client streams of
random lengths. They are mixed with the valid IDs of a seeded state (a server, a backup, an image,
a replica, a policy, a job, the real projects and regions) and with IDs harvested from answers, so
that calls reach deep code and not only NOT_FOUND. A call is wild (anything, anywhere), sane
(valid values, sent to the region that holds what it names) or a mutant (sane but for one field);
a second test sweeps every value at or past the limit of every field that has one, in otherwise
sane calls. Only the clock moves (AdvanceClock, SetClock) are held to CLOCK_RANGE. The properties:

1. no call answers INTERNAL, UNKNOWN or DATA_LOSS, none outlives a sane deadline (except a Watch*
   of something that never ends), and no process dies;
2. a refused call changes no user-visible state: the catalogs of every node and the coordinator
   are the same before and after it (compared once the cluster has settled, so that no background
   work is running).

The figures (calls per service, statuses) are printed by the last test of the module."""

from __future__ import annotations

import collections
import random
import sqlite3
import string
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from region_node.storage.chunk_store import chunk_hash
from tests.harness import Cluster, write_cluster_config

pytestmark = pytest.mark.timeout(300)

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
NO_REPLICATION = "cn-south-1"
REGIONS = (SOURCE, TARGET, NO_REPLICATION)
PROJECTS = ("cn-north-4_default", "cn-east-3_default", "cn-east-3_dr", "cn-south-1_default")
MAIN_PROJECTS = {"cn-north-4_default", "cn-east-3_default", "cn-south-1_default"}

KIB = 1 << 10
MIB = 1 << 20
TIB = 1 << 40
DAY = 86400
CHUNK = 64 * KIB  # the smallest chunk size a cluster takes: every chunk-sized value stays small
EXAMPLES_PER_RPC = 30  # and more for requests with more fields
DEADLINE = 20.0  # seconds: any call that is not a Watch* of something unending ends well within
LIMIT_ROUNDS = 3  # sane calls around each value at or past a limit
WATCH_DEADLINE = 1.5
SETTLE_TIMEOUT = 60.0
CLOCK_RANGE = 2 * DAY  # AdvanceClock and SetClock move the clock by at most this much
MAX_ADVANCE_SECONDS = 10 * 366 * DAY  # what one AdvanceClock may move the clock by, at most
HARVEST_MAX_SERVER_BYTES = 64 * MIB  # bigger servers are not reused: reading them takes long
POOL_CAP = 64
MAX_DEPTH = 3
MAX_REPEATED = 5
MAX_STREAM = 5
MAX_STRING = 300
MAX_BYTES = 64 * KIB

BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

# The user-visible catalog tables, compared around every refused call.
NODE_TABLES = (
    "servers",
    "disks",
    "backups",
    "backup_disks",
    "manifest",
    "images",
    "replication_records",
    "holds",
)
COORDINATOR_TABLES = ("jobs", "policies", "policy_servers")


# -- the RPCs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rpc:
    service: ServiceDescriptor
    method: MethodDescriptor

    def __repr__(self) -> str:
        return self.name

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis shows a draw
        printer.text(repr(self))

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def on_node(self) -> bool:
        return self.service.name.startswith("RegionNode")

    @property
    def is_watch(self) -> bool:
        return self.method.name.startswith("Watch")

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


ALL_RPCS: tuple[Rpc, ...] = tuple(
    Rpc(service, method)
    for file in (pb.DESCRIPTOR, cpb.DESCRIPTOR)
    for service in file.services_by_name.values()
    for method in service.methods
)


# -- pools of valid values, seeded and harvested --------------------------------------------------
class Pools:
    """Valid values by kind ("server", "backup", "hash", ...). A strategy draws an index, and the
    value is looked up when it is drawn, so that IDs learnt during the run are used too."""

    def __init__(self) -> None:
        self._items: dict[str, list[Any]] = collections.defaultdict(list)
        self._pinned: dict[str, int] = collections.defaultdict(int)
        # The IDs of each kind that exist now, as the last settled snapshot says.
        self.live: dict[str, set[Any]] = {}

    def add(self, kind: str, value: Any, pin: bool = False) -> None:
        items = self._items[kind]
        if not value or value in items:
            return
        if pin:
            items.insert(self._pinned[kind], value)
            self._pinned[kind] += 1
        else:
            items.append(value)
        if len(items) > POOL_CAP:
            del items[self._pinned[kind]]  # the oldest harvested one

    def pick(self, kind: str, index: int, default: Any = "", live: bool = False) -> Any:
        """The index-th value (modulo), of those that still exist if `live`."""
        items = self._items[kind]
        if live and kind in self.live:
            items = [item for item in items if item in self.live[kind]]
        return items[index % len(items)] if items else default

    def __getitem__(self, kind: str) -> list[Any]:
        return self._items[kind]


POOLS = Pools()
ID_HOME: dict[str, tuple[str, str]] = {}  # resource ID -> (region, project), as last settled
CLOCK_NOW = [0]  # the cluster clock (seconds), read before a clock-moving request is drawn


BYTES_KINDS = {"hash", "chunk_data"}


def _from_pool(kind: str, live: bool = True) -> st.SearchStrategy[Any]:
    """A value of the pool: one that exists now, or (not `live`) any ever seen, stale ones too."""
    default = b"" if kind in BYTES_KINDS else ""
    return st.integers(0, POOL_CAP - 1).map(lambda i: POOLS.pick(kind, i, default, live))


# -- generic strategies by field type -------------------------------------------------------------
SPECIAL_INTS = (
    0,
    1,
    2,
    3,
    23,
    24,
    25,
    255,
    256,
    999,
    1000,
    1001,
    4095,
    4096,
    4097,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    99999,
    100000,
    MIB - 1,
    MIB,
    MIB + 1,
    4 * MIB,
    4 * MIB + 1,
    8 * TIB,
    8 * TIB + MIB,
    16 * TIB,
    DAY,
    2 * DAY,
    10 * 366 * DAY,
    10 * 366 * DAY + 1,
    999_999_999,
    1_000_000_000,
    253402300799,
    253402300800,
    -62135596800,
    -62135596801,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -1,
    -2,
    -(2**31),
    -(2**63),
)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Code points a long string is made of: ASCII (controls too), P1's CJK, other scripts, emoji.
_ALPHABETS = (
    string.printable,
    "\x00\x01\x7f",
    "".join(map(chr, range(0x4E00, 0x4E40))),
    "ÄéßЖשّ",
    "\U0001f600\U0001f4be\u200b\ufeff\u202e",
)
_STRING_SPECIALS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "../../etc/passwd",
    "'; DROP TABLE servers; --",
    "%s%n%x",
    "名字",
    "a" * 255,
    "a" * 256,
    "名" * 255,
    "\U0001f600",
    "line\nbreak",
    "-",
    "_",
)


def _random_text(length: int, seed: int) -> str:
    rng = random.Random(seed)
    alphabet = "".join(rng.sample(_ALPHABETS, rng.randint(1, len(_ALPHABETS))))
    return "".join(rng.choice(alphabet) for _ in range(length))


def _random_bytes(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


TEXT: st.SearchStrategy[str] = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=24),
    st.sampled_from(_STRING_SPECIALS),
    st.builds(_random_text, st.integers(0, MAX_STRING), st.integers(0, 2**32)),
)
BYTES: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=32, max_size=32),
    st.builds(_random_bytes, st.integers(0, MAX_BYTES), st.integers(0, 2**32)),
)
# Data (of WriteDisk, of a Chunk) is sometimes a whole chunk, or as much as one WriteDisk message
# may carry, or just more: one such value per message keeps it under the 8 MiB message limit.
DATA_BYTES: st.SearchStrategy[bytes] = st.one_of(
    BYTES,
    st.builds(_random_bytes, st.sampled_from([CHUNK, 4 * MIB, 4 * MIB + 1]), st.integers(0, 2**32)),
)


@cache
def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(max(low, -2), min(high, 40)),
        st.sampled_from([v for v in SPECIAL_INTS if low <= v <= high]),
        st.integers(low, high),
    )


# -- valid values by field name -------------------------------------------------------------------
ID_KINDS = {
    "project_id": "project",
    "source_project_id": "project",
    "target_project_id": "project",
    "region_id": "region",
    "source_region_id": "region",
    "target_region_id": "region",
    "server_id": "server",
    "server_ids": "server",
    "backup_id": "backup",
    "source_backup_id": "backup",
    "replica_id": "replica",
    "image_id": "image",
    "policy_id": "policy",
    "job_id": "job",
    "replication_job_id": "job",
    "disk_id": "disk",
    "hash": "hash",
    "hashes": "hash",
    "data": "chunk_data",
}
VALID_RRULES = (
    "FREQ=DAILY;BYHOUR=2;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=3;BYMINUTE=30",
    "FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=1;BYMINUTE=15",
    "FREQ=DAILY;BYHOUR=0,12;BYMINUTE=0",
    "RRULE:FREQ=DAILY;BYHOUR=5;BYMINUTE=0",
)
ODD_RRULES = (
    "FREQ=HOURLY;BYHOUR=1;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=1;BYMINUTE=0,30",
    "FREQ=DAILY;BYHOUR=25;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=-1;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=99999999999999999999;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=1;BYMINUTE=0;COUNT=2",
    "FREQ=WEEKLY;BYHOUR=1;BYMINUTE=0",
    "FREQ=WEEKLY;BYDAY=XX;BYHOUR=1;BYMINUTE=0",
    "FREQ=WEEKLY;BYDAY=+1MO;BYHOUR=1;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=;BYMINUTE=0",
    "FREQ=DAILY;BYHOUR=1;BYMINUTE=0;BYHOUR=2",
    "FREQ=DAILY;BYHOUR=1.5;BYMINUTE=0",
    ";;",
    "=",
)
_KEEP = (0, 1, 2, 99999)
# Valid values by field name: a sane draw takes only these.
SANE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["", "web-01", "备份_1", "a", "A" * 255, "名" * 255]),
    "description": st.sampled_from(["", "nightly", "d" * 255, "说明"]),
    "request_id": st.one_of(
        st.sampled_from(["", "fuzz-request-1"]),
        st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    ),
    "idempotency_token": st.one_of(
        st.sampled_from(["", "fuzz-token-1"]), st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
    ),
    "rrule": st.sampled_from(VALID_RRULES),
    "timezone": st.sampled_from(["", "UTC", "Asia/Shanghai", "Europe/Paris", "EST5EDT"]),
    "update_fields": st.sampled_from(
        ["name", "description", "backup_schedule", "retention", "enabled", "replication"]
    ),
    "size_bytes": st.sampled_from([MIB, 2 * MIB, 3 * MIB]),
    "disk_index": st.integers(0, 1),
    "disk_indexes": st.integers(0, 1),
    "chunk_index": st.integers(0, 15),
    "length": st.sampled_from([0, 4096, CHUNK]),
    "offset": st.one_of(st.sampled_from([0, CHUNK, MIB - CHUNK]), st.integers(0, 15 * CHUNK)),
    "page_size": st.sampled_from([0, 1, 2, 1000]),
    "page_token": st.one_of(st.just(""), _from_pool("page_token")),
    "target_region_id": st.just(TARGET),  # the one region that accepts replication at first
    "keep_count": st.sampled_from(_KEEP),
    "keep_days": st.sampled_from(_KEEP),
    "replica_keep_count": st.sampled_from(_KEEP),
}
U32, U64 = 2**32 - 1, 2**64 - 1
ODD_LIST: dict[str, tuple[Any, ...]] = {
    "name": ("a" * 256, "名" * 256, "bad name", "x.y", "ü", "\x00"),
    "description": ("d" * 256, "说明" * 128),
    "request_id": ("a" * 64, "a" * 65, "has space", "é", "\x00"),
    "idempotency_token": ("a" * 64, "a" * 65, "has space", "é", "\x00"),
    "rrule": ODD_RRULES,
    "timezone": (
        "Mars/Olympus",
        "../../etc/passwd",
        "UTC+8",
        "/etc/localtime",
        "Asia",
        "a" * 256,
        "zone1970.tab",
        "UTC\x00",
    ),
    "update_fields": ("policy_id", "server_ids", "created_at", ""),
    "size_bytes": (0, MIB - 1, MIB + 1, 8 * TIB, 8 * TIB + MIB, 2**63, U64),
    "disk_index": (2, 23, 24, 25, U32),
    "disk_indexes": (2, 23, 24, 25, U32),
    "chunk_index": (16, 31, 32, 33, 2**63, U64),
    "length": (CHUNK - 1, CHUNK + 1, MIB, MIB + 1, 2 * MIB, 2**63, U64),
    "offset": (MIB, MIB - 1, 2 * MIB, 2 * MIB - 1, 2 * MIB + 1, 3 * MIB, 2**63, U64),
    "page_size": (1001, U32),
    "keep_count": (100000, U32),
    "keep_days": (100000, U32),
    "replica_keep_count": (100000, U32),
}


def odd_values(fd: FieldDescriptor) -> tuple[Any, ...]:
    """The values at and past the limits of this field that its type can carry."""
    values = ODD_LIST.get(fd.name, ())
    if fd.type not in _INT_RANGES:
        return values
    low, high = _INT_RANGES[fd.type]
    return tuple(v for v in values if isinstance(v, int) and low <= v <= high)


def _clock_instant() -> st.SearchStrategy[Timestamp]:
    """An instant for AdvanceClock.to or SetClock.now: near the cluster clock (never more than
    CLOCK_RANGE ahead, so that moving it stays fast), or not a valid timestamp at all."""
    near = st.builds(
        lambda offset, nanos: Timestamp(seconds=CLOCK_NOW[0] + offset, nanos=nanos),
        st.integers(-CLOCK_RANGE, CLOCK_RANGE),
        st.integers(0, 999_999_999),
    )
    bad_seconds = st.builds(
        lambda seconds, nanos: Timestamp(seconds=seconds, nanos=nanos),
        st.sampled_from([253402300800, 2**63 - 1, -62135596801, -(2**63)]),
        _ints(-(2**31), 2**31 - 1),
    )
    bad_nanos = st.builds(
        lambda offset, nanos: Timestamp(seconds=CLOCK_NOW[0] + offset, nanos=nanos),
        st.integers(-CLOCK_RANGE, CLOCK_RANGE),
        st.sampled_from([-1, 1_000_000_000, 2**31 - 1, -(2**31)]),
    )
    return st.one_of(near, bad_seconds, bad_nanos)


def _advance_to() -> st.SearchStrategy[Timestamp]:
    """AdvanceClock.to: an instant near the clock, or one past the 10 years AdvanceClock may
    move it at once (refused, so it stays fast), up to the last instant a timestamp holds."""
    too_far = st.builds(
        lambda offset: Timestamp(seconds=min(CLOCK_NOW[0] + offset, 253402300799)),
        st.one_of(
            st.integers(MAX_ADVANCE_SECONDS + 1, MAX_ADVANCE_SECONDS + DAY),
            st.just(253402300799),
        ),
    )
    return st.one_of(_clock_instant(), too_far)


# Fields whose generic values must be held in: only the clock moves are bounded.
FIELD_OVERRIDES: dict[tuple[str, str], Callable[[], st.SearchStrategy[Any]]] = {
    ("csbs.v1.AdvanceClockRequest", "to"): _advance_to,
    ("csbs.v1.AdvanceClockRequest", "by_seconds"): lambda: st.one_of(
        st.integers(0, CLOCK_RANGE),
        st.sampled_from([3600, DAY // 2, DAY, CLOCK_RANGE]),
        st.sampled_from([MAX_ADVANCE_SECONDS + 1, 2**63 - 1, 2**63, 2**64 - 1]),
    ),
    ("csbs.v1.SetClockRequest", "now"): _clock_instant,
}


def _scalar(fd: FieldDescriptor, sane: bool) -> st.SearchStrategy[Any]:
    """Any value of the field's type, or one of its valid values where there are some. A sane
    draw takes a valid value wherever the field has some, so that calls get past the checks of
    every field at once and reach deep code; a wild one mixes them with anything."""
    t = fd.type
    generic: st.SearchStrategy[Any]
    if t == FieldDescriptor.TYPE_STRING:
        generic = TEXT
    elif t == FieldDescriptor.TYPE_BYTES:
        generic = DATA_BYTES if fd.name == "data" else BYTES
    elif t == FieldDescriptor.TYPE_BOOL:
        generic = st.booleans()
    elif t == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        known = st.sampled_from([v.number for v in fd.enum_type.values])
        generic = known if sane else st.one_of(known, _ints(-(2**31), 2**31 - 1))
    elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        generic = st.floats(allow_nan=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    else:
        generic = _ints(*_INT_RANGES[t])
    valid: list[st.SearchStrategy[Any]] = []
    if fd.name in ID_KINDS:
        kind = ID_KINDS[fd.name]
        pool = _from_pool(kind, live=sane)
        # "" is the main project: the commonest right answer
        valid.append(st.one_of(st.just(""), st.just(""), pool) if kind == "project" else pool)
    if fd.name in SANE_VALUES:
        valid.append(SANE_VALUES[fd.name])
    if sane:
        return st.one_of(*valid) if valid else generic
    odd = [st.sampled_from(odd_values(fd))] if odd_values(fd) else []
    return st.one_of(generic, *valid, *odd)


def _value(fd: FieldDescriptor, depth: int, sane: bool) -> st.SearchStrategy[Any]:
    assert fd.containing_type is not None
    override = FIELD_OVERRIDES.get((fd.containing_type.full_name, fd.name))
    if override is not None:
        one: st.SearchStrategy[Any] = override()
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        one = strategy_for(fd.message_type, depth + 1, sane)
    else:
        one = _scalar(fd, sane)
    if fd.is_repeated and sane:
        scalar = fd.type != FieldDescriptor.TYPE_MESSAGE
        return st.lists(one, max_size=2, unique=scalar)
    if fd.is_repeated:
        return st.lists(one, max_size=MAX_REPEATED)
    if fd.type == FieldDescriptor.TYPE_MESSAGE and not (sane and fd.containing_oneof is None):
        return st.one_of(st.none(), one)  # absent, or set
    return one


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        if value is None:
            continue
        fd = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


@cache
def strategy_for(
    descriptor: Descriptor, depth: int = 0, sane: bool = False
) -> st.SearchStrategy[Message]:
    """Any well-formed message of this type: every field drawn by its type (at most one member
    of each oneof), nested messages down to MAX_DEPTH; for a few types, a valid-looking whole
    message too (TEMPLATES), which is all a sane draw takes."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    template = TEMPLATES.get(descriptor.full_name)
    if sane and template is not None:
        return template()

    def alone(fd: FieldDescriptor) -> bool:
        return fd.containing_oneof is None or len(fd.containing_oneof.fields) == 1

    plain = {fd.name: _value(fd, depth, sane) for fd in descriptor.fields if alone(fd)}
    oneofs = [
        st.one_of(
            st.none(), *(st.tuples(st.just(fd.name), _value(fd, depth, sane)) for fd in o.fields)
        )
        for o in descriptor.oneofs
        if len(o.fields) > 1
    ]

    def build(values: dict[str, Any], chosen: Sequence[tuple[str, Any] | None]) -> Message:
        values = dict(values)
        for pair in chosen:
            if pair is not None:
                values[pair[0]] = pair[1]
        return _build(cls, values)

    generic = st.builds(build, st.fixed_dictionaries(plain), st.tuples(*oneofs))
    return st.one_of(generic, template()) if template is not None else generic


# -- valid-looking messages, for calls that need several fields right at once ----------------------
def _chunk() -> st.SearchStrategy[Message]:
    def make(i: int) -> Message:
        digest, data = POOLS.pick("chunk", i, (b"", b""))
        return pb.Chunk(hash=digest, data=data)

    return st.integers(0, POOL_CAP - 1).map(make)


def _manifest_entry() -> st.SearchStrategy[Message]:
    def make(i: int) -> Message:
        disk_index, chunk_index, digest, length = POOLS.pick("manifest_entry", i, (0, 0, b"", 0))
        return pb.ManifestEntry(
            disk_index=disk_index, chunk_index=chunk_index, hash=digest, length=length
        )

    return st.integers(0, POOL_CAP - 1).map(make)


def _replica_header() -> st.SearchStrategy[Message]:
    disks = st.lists(
        st.builds(
            lambda i, size: pb.BackupDisk(disk_index=i, size_bytes=size),
            st.integers(0, 3),
            st.sampled_from([MIB, 2 * MIB]),
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda d: d.disk_index,
    )
    return st.builds(
        lambda project, name, server_type, disks, region, backup, way, job: pb.CreateReplicaHeader(
            project_id=project,
            name=name,
            server_type=server_type,
            disks=disks,
            origin=pb.BackupOrigin(
                replicated=True,
                source_region_id=region,
                source_backup_id=backup,
                way=way,
                replication_job_id=job,
            ),
            job_id=job,
        ),
        st.one_of(st.just(""), _from_pool("project")),
        st.sampled_from(["replica-1", "副本"]),
        st.sampled_from([common_pb2.SERVER_TYPE_ECS, common_pb2.SERVER_TYPE_BMS]),
        disks,
        _from_pool("region"),
        _from_pool("backup"),
        st.integers(0, 3),
        st.one_of(_from_pool("job"), st.from_regex(r"fuzz-[a-z0-9]{1,12}", fullmatch=True)),
    )


def _policy() -> st.SearchStrategy[Message]:
    schedule = st.builds(
        lambda rrule, tz: cpb.Schedule(rrule=rrule, timezone=tz),
        st.sampled_from(VALID_RRULES),
        st.sampled_from(["", "UTC", "Asia/Shanghai"]),
    )
    retention = st.one_of(
        st.just(cpb.RetentionRule()),
        st.builds(lambda n: cpb.RetentionRule(keep_count=n), st.integers(1, 5)),
        st.builds(lambda n: cpb.RetentionRule(keep_days=n), st.integers(1, 5)),
    )
    replication = st.one_of(
        st.none(),
        st.builds(
            lambda enabled, target, project, schedule, keep: cpb.PolicyReplication(
                enabled=enabled,
                target_region_id=target,
                target_project_id=project,
                schedule=schedule,
                replica_keep_count=keep,
            ),
            st.booleans(),
            st.sampled_from(REGIONS),
            st.one_of(st.just(""), _from_pool("project")),
            schedule,
            st.integers(0, 3),
        ),
    )
    return st.builds(
        lambda policy_id, region, name, servers, backup, keep, enabled, repl: cpb.Policy(
            policy_id=policy_id,
            region_id=region,
            name=name,
            server_ids=servers,
            backup_schedule=backup,
            retention=keep,
            enabled=enabled,
            replication=repl,
        ),
        _from_pool("policy"),
        st.sampled_from(REGIONS),
        st.sampled_from(["daily", "每日"]),
        st.lists(_from_pool("server"), max_size=2, unique=True),
        schedule,
        retention,
        st.booleans(),
        replication,
    )


def _timestamp() -> st.SearchStrategy[Message]:
    return st.builds(
        lambda offset, nanos: Timestamp(seconds=CLOCK_NOW[0] + offset, nanos=nanos),
        st.integers(-30 * DAY, 30 * DAY),
        st.integers(0, 999_999_999),
    )


def _create_server() -> st.SearchStrategy[Message]:
    blank = st.builds(
        lambda project, name, kind, sizes, request_id: pb.CreateServerRequest(
            project_id=project,
            name=name,
            server_type=kind,
            disks=[pb.DiskSpec(size_bytes=size) for size in sizes],
            request_id=request_id,
        ),
        st.one_of(st.just(""), _from_pool("project")),
        SANE_VALUES["name"],
        st.sampled_from([0, 1, 2]),
        st.lists(SANE_VALUES["size_bytes"], min_size=1, max_size=3),
        SANE_VALUES["request_id"],
    )
    from_image = st.builds(
        lambda image_id, name: pb.CreateServerRequest(image_id=image_id, name=name),
        _from_pool("image"),
        SANE_VALUES["name"],
    )
    return st.one_of(blank, from_image)


TEMPLATES: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
    "csbs.v1.CreateServerRequest": _create_server,
    "google.protobuf.Timestamp": _timestamp,
    "csbs.v1.Chunk": _chunk,
    "csbs.v1.ManifestEntry": _manifest_entry,
    "csbs.v1.CreateReplicaHeader": _replica_header,
    "csbs.v1.Policy": _policy,
}


# -- what a call is, as drawn ---------------------------------------------------------------------
def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return repr(value) if len(value) <= 40 else f"<{len(value)} bytes {value[:8].hex()}..>"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:40]!r}..<{len(value)} chars>"
    if isinstance(value, Message):
        parts = []
        for fd, v in value.ListFields():
            if fd.is_repeated:
                parts.append(f"{fd.name}=[{', '.join(_short(x) for x in v)}]")
            else:
                parts.append(f"{fd.name}={_short(v)}")
        return f"{type(value).__name__}({', '.join(parts)})"
    return repr(value)


@dataclass(frozen=True)
class Call:
    """One drawn call: its RPC, where it goes and what it sends (a list for a client stream)."""

    rpc: Rpc
    region: str
    requests: tuple[Message, ...]
    metadata: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        where = f" to {self.region}" if self.region else ""
        body = ", ".join(_short(r) for r in self.requests)
        if self.rpc.method.client_streaming:
            body = f"[{body}]"
        meta = f" metadata={self.metadata}" if self.metadata else ""
        return f"{self.rpc.name}{where}({body}){meta}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis shows a draw
        printer.text(repr(self))


def _home(messages: Sequence[Message], metadata: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The region and project of the first existing resource a call names, or ("", "")."""
    for _, value in metadata:
        if value in ID_HOME:
            return ID_HOME[value]
    for message in messages:
        for fd, value in message.ListFields():
            values = value if fd.is_repeated else [value]
            for item in values:
                if isinstance(item, Message):
                    found = _home([item], ())
                    if found[0]:
                        return found
                elif isinstance(item, str) and item in ID_HOME:
                    return ID_HOME[item]
    return "", ""


def _set_home(message: Message, fields: dict[str, str]) -> None:
    """Sets these fields wherever the message (or one inside it) has them."""
    for fd, value in message.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if fd.is_repeated else [value]:
                _set_home(item, fields)
    for name, value in fields.items():
        if name in message.DESCRIPTOR.fields_by_name:
            setattr(message, name, value)


@cache
def _paths(descriptor: Descriptor, depth: int = 0) -> tuple[tuple[FieldDescriptor, ...], ...]:
    """Every field of a message, and of the messages in it (the first of a repeated one), as
    paths."""
    paths: list[tuple[FieldDescriptor, ...]] = []
    for fd in descriptor.fields:
        paths.append((fd,))
        bounded = (descriptor.full_name, fd.name) in FIELD_OVERRIDES  # drawn whole, never inside
        if fd.type == FieldDescriptor.TYPE_MESSAGE and depth < 2 and not bounded:
            paths += [(fd, *rest) for rest in _paths(fd.message_type, depth + 1)]
    return tuple(paths)


def _replace(message: Message, path: Sequence[FieldDescriptor], value: Any) -> None:
    """Sets the field at `path` to `value` (None: clears it)."""
    target = message
    for fd in path[:-1]:
        if fd.is_repeated:  # the first element, made if there is none
            items = getattr(target, fd.name)
            target = items[0] if len(items) else items.add()
        else:
            target = getattr(target, fd.name)
    last = path[-1]
    if value is None:
        target.ClearField(last.name)
    elif last.is_repeated:
        target.ClearField(last.name)
        target.MergeFrom(_build(type(target), {last.name: value}))
    elif last.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(target, last.name).CopyFrom(value)
    else:
        setattr(target, last.name, value)


@st.composite
def mutants(draw: st.DrawFn, descriptor: Descriptor) -> Message:
    """A sane message with one field (maybe deep inside) replaced by anything: past every other
    check, so that the one field's own check is what is tried."""
    message = draw(strategy_for(descriptor, 0, True))
    paths = _paths(descriptor)
    limited = [p for p in paths if odd_values(p[-1])]  # fields with limits: more often
    path = draw(st.one_of(st.sampled_from(paths), *([st.sampled_from(limited)] if limited else [])))
    last = path[-1]
    anything = _value(last, len(path), False)
    if odd_values(last) and not last.is_repeated:
        anything = st.one_of(st.sampled_from(odd_values(last)), anything)  # the limits first
    _replace(message, path, draw(anything))
    return message


Mutation = tuple[tuple[FieldDescriptor, ...], Any]  # a field (as a path) and its value


@cache
def limit_cases(rpc: Rpc) -> tuple[Mutation, ...]:
    """Every value at or past a limit (ODD_LIST) of every field of the request that has one."""
    return tuple(
        (path, [value] if path[-1].is_repeated else value)
        for path in _paths(rpc.method.input_type)
        for value in odd_values(path[-1])
    )


@st.composite
def calls(draw: st.DrawFn, rpc: Rpc, mutation: Mutation | None = None) -> Call:
    """A call of `rpc`. A sane call is made of valid values and goes to the region that holds
    what it names, in that resource's project; a mutant is a sane call with one field replaced
    by anything (or by `mutation`, if given); a wild one is anything, anywhere."""
    mode = "sane" if mutation else draw(st.sampled_from(["sane", "mutant", "wild"]))
    sane = mode != "wild"
    region = draw(st.sampled_from(REGIONS)) if rpc.on_node else ""
    one = strategy_for(rpc.method.input_type, 0, sane)
    if mode == "mutant" and _paths(rpc.method.input_type):
        one = mutants(rpc.method.input_type)
    metadata: tuple[tuple[str, str], ...] = ()
    if not rpc.method.client_streaming:
        requests = [draw(one)]
    elif rpc.method.name == "CreateReplica" and sane:
        header = draw(_replica_header())
        parts = draw(st.lists(strategy_for(pb.ManifestPart.DESCRIPTOR, 1, True), max_size=3))
        requests = [
            _build(pb.CreateReplicaRequest, {"header": header}),
            *(_build(pb.CreateReplicaRequest, {"manifest": part}) for part in parts),
        ]
        entries = 0
        for part in requests[1:]:
            assert isinstance(part, pb.CreateReplicaRequest)
            entries += len(part.manifest.entries)
        requests.append(pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=entries)))
    else:
        requests = draw(st.lists(one, max_size=MAX_STREAM))
    if rpc.method.name == "WriteDisk" and len(requests) > 1 and (sane or draw(st.booleans())):
        # One disk for the whole stream, as a real writer does: the offsets and data differ.
        first = requests[0]
        for later in requests[1:]:
            for name in ("project_id", "server_id", "disk_index"):
                setattr(later, name, getattr(first, name))
    if rpc.method.name == "WriteChunks":
        value = draw(
            _from_pool("replica")
            if sane
            else st.one_of(
                st.none(),
                _from_pool("replica", live=False),
                _from_pool("backup"),
                st.text(string.ascii_letters + string.digits + "-_ ./", max_size=40),
            )
        )
        if value is not None:
            metadata = (("x-csbs-replica-id", value),)
    use_home_project = draw(st.booleans())  # else what was drawn: often "", the main one
    if sane:
        # Drawn whatever the pools hold: what is drawn must not depend on the cluster's state.
        home_region, home_project = _home(requests, metadata)
        home: dict[str, str] = {}
        if home_region and rpc.on_node:
            region = home_region
        elif home_region:
            home = {"region_id": home_region, "source_region_id": home_region}
        if home_region and (use_home_project or home_project not in MAIN_PROJECTS):
            home |= {"project_id": home_project, "source_project_id": home_project}
        elif home_region:
            home |= {"project_id": "", "source_project_id": ""}  # the main project
        for request in requests:
            _set_home(request, home)
    if mutation is not None and mutation[0][0].name == "manifest":
        # CreateReplica: the header first, then the manifest part the mutation is made in
        if len(requests) < 2:
            requests.append(pb.CreateReplicaRequest(manifest=pb.ManifestPart()))
        _replace(requests[1], *mutation)
    elif mutation is not None and requests:
        _replace(requests[0], *mutation)
    return Call(rpc, region, tuple(requests), metadata)


# -- the cluster under test -----------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, list[tuple[Any, ...]]]
    busy: tuple[str, ...]  # what is still running in the background

    def diff(self, other: Snapshot) -> str:
        lines = []
        for key in sorted(set(self.tables) | set(other.tables)):
            before, after = set(self.tables.get(key, [])), set(other.tables.get(key, []))
            for row in sorted(before - after, key=repr)[:3]:
                lines.append(f"{key}: - {row}")
            for row in sorted(after - before, key=repr)[:3]:
                lines.append(f"{key}: + {row}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[Message]


@dataclass
class Figures:
    by_service: collections.Counter[str] = field(default_factory=collections.Counter)
    by_status: collections.Counter[str] = field(default_factory=collections.Counter)
    by_service_status: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    by_rpc: collections.Counter[str] = field(default_factory=collections.Counter)
    ok_by_rpc: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    def record(self, call: Call, outcome: Outcome) -> None:
        self.by_service[call.rpc.service.name] += 1
        self.by_status[outcome.code.name] += 1
        self.by_service_status[(call.rpc.service.name, outcome.code.name)] += 1
        self.by_rpc[call.rpc.name] += 1
        if outcome.code == grpc.StatusCode.OK:
            self.ok_by_rpc[call.rpc.name] += 1


FIGURES = Figures()


@dataclass
class Seed:
    """The seeded state the fuzzer aims at: remade whenever a fuzzed call took part of it."""

    server_id: str = ""
    backup_id: str = ""
    image_id: str = ""
    replica_id: str = ""
    pending_replica_id: str = ""
    policy_id: str = ""
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)


class Fuzzer:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seed = Seed()
        self._made = 0  # chunks written so far: each seeded chunk is new
        self._dbs: dict[str, sqlite3.Connection] = {}
        self._paths = {r.region_id: r.data_dir / "catalog.db" for r in cluster.config.regions}
        self._paths["coordinator"] = cluster.config.coordinator.data_dir / "coordinator.db"

    def close(self) -> None:
        for conn in self._dbs.values():
            conn.close()

    # -- calls --------------------------------------------------------------------------------
    def call(self, call: Call) -> Outcome:
        rpc = call.rpc
        channel = (
            self.cluster.channel(call.region) if rpc.on_node else self.cluster.coordinator_channel()
        )
        timeout = WATCH_DEADLINE if rpc.is_watch else DEADLINE
        serialize = rpc.request_class.SerializeToString
        deserialize = rpc.response_class.FromString
        responses: list[Message] = []
        client_streaming = rpc.method.client_streaming
        server_streaming = rpc.method.server_streaming
        try:
            if client_streaming and not server_streaming:
                stream_unary = channel.stream_unary(rpc.path, serialize, deserialize)
                responses.append(
                    stream_unary(iter(call.requests), timeout=timeout, metadata=call.metadata)
                )
            elif server_streaming and not client_streaming:
                unary_stream = channel.unary_stream(rpc.path, serialize, deserialize)
                for answer in unary_stream(call.requests[0], timeout=timeout):
                    responses.append(answer)
            else:
                unary_unary = channel.unary_unary(rpc.path, serialize, deserialize)
                responses.append(unary_unary(call.requests[0], timeout=timeout))
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
            return Outcome(code, details, responses)
        return Outcome(grpc.StatusCode.OK, "", responses)

    def check_alive(self) -> None:
        for process in [*self.cluster.nodes, self.cluster.coordinator]:
            process.raise_if_exited("during the fuzzing")

    def count(self, table: str) -> int:
        """Rows of a coordinator table (for the figures)."""
        return int(self._db("coordinator").execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def refresh_clock(self) -> None:
        state = self._coordinator().GetClock(cpb.GetClockRequest(), timeout=DEADLINE)
        CLOCK_NOW[0] = state.now.seconds

    # -- state --------------------------------------------------------------------------------
    def _db(self, key: str) -> sqlite3.Connection:
        conn = self._dbs.get(key)
        if conn is None:
            conn = sqlite3.connect(
                f"file:{self._paths[key]}?mode=ro", uri=True, isolation_level=None, timeout=30
            )
            self._dbs[key] = conn
        return conn

    def snapshot(self) -> Snapshot:
        """The user-visible rows of every catalog, each read in one read transaction, and what
        is still running in the background."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        busy: list[str] = []
        for key in self._paths:
            conn = self._db(key)
            conn.execute("BEGIN")
            try:
                for table in COORDINATOR_TABLES if key == "coordinator" else NODE_TABLES:
                    rows = conn.execute(f"SELECT * FROM {table}").fetchall()
                    tables[f"{key}/{table}"] = sorted(rows, key=repr)
                if key == "coordinator":
                    busy += [
                        f"job {r[0]} status {r[1]}"
                        for r in conn.execute(
                            "SELECT job_id, status FROM jobs WHERE status IN (1, 2)"
                        )
                    ]
                    busy += [
                        f"policy run {r[0]}"
                        for r in conn.execute(
                            "SELECT run_id FROM policy_runs "
                            "WHERE json_extract(body, '$.status') = 1"
                        )
                    ]
                    busy += [
                        f"clean-up {r[0]} of job {r[1]}"
                        for r in conn.execute("SELECT kind, job_id FROM cleanups")
                    ]
                else:
                    busy += [
                        f"{key} server {r[0]} status {r[1]}"
                        for r in conn.execute(
                            "SELECT server_id, status FROM servers WHERE status IN (1, 3, 4)"
                        )
                    ]
                    busy += [
                        f"{key} backup {r[0]} status {r[1]}"
                        for r in conn.execute(
                            "SELECT backup_id, status FROM backups WHERE status IN (1, 5)"
                        )
                    ]
            finally:
                conn.execute("COMMIT")
        return Snapshot(tables, tuple(busy))

    def settle(self) -> Snapshot:
        """Waits until nothing runs in the background, remakes what the seeded state lost, and
        answers the settled state."""
        self._bring_regions_back()
        for _ in range(3):
            deadline = time.monotonic() + SETTLE_TIMEOUT
            snap = self.snapshot()
            while snap.busy:
                assert time.monotonic() < deadline, f"the cluster never settled: {snap.busy}"
                time.sleep(0.02)
                snap = self.snapshot()
            if not self._repair(snap):
                POOLS.live = live_ids(snap)
                ID_HOME.clear()
                for key, rows in snap.tables.items():
                    region, _, table = key.partition("/")
                    if table in ("servers", "backups", "images"):
                        ID_HOME.update((row[0], (region, row[1])) for row in rows)
                return snap
        raise AssertionError("the seeded state could not be remade")

    # -- the seeded state ---------------------------------------------------------------------
    def _node(self, region: str) -> Any:
        from csbs.v1.region_node_pb2_grpc import RegionNodeStub

        return RegionNodeStub(self.cluster.channel(region))

    def _internal(self, region: str) -> Any:
        from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub

        return RegionNodeInternalStub(self.cluster.channel(region))

    def _admin(self, region: str) -> Any:
        from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub

        return RegionNodeAdminStub(self.cluster.channel(region))

    def _coordinator(self) -> Any:
        from csbs.v1.coordinator_pb2_grpc import CoordinatorStub

        return CoordinatorStub(self.cluster.coordinator_channel())

    def seed_once(self) -> None:
        """What is made once: the regions and projects, a bare-metal server."""
        for region in REGIONS:
            POOLS.add("region", region, pin=True)
        for project in PROJECTS:
            POOLS.add("project", project, pin=True)
        bms = self._node(SOURCE).CreateServer(
            pb.CreateServerRequest(
                name="bms-seed",
                server_type=common_pb2.SERVER_TYPE_BMS,
                disks=[pb.DiskSpec(size_bytes=MIB)],
            ),
            timeout=DEADLINE,
        )
        harvest(bms, pin=True)
        # Chunks no region holds yet: the manifest of the pending replica, for WriteChunks.
        for i in range(4):
            data = _random_bytes(CHUNK, 1000 + i)
            self.seed.chunks.append((chunk_hash(data), data))

    def _bring_regions_back(self) -> None:
        """Ends any region outage a fuzzed SetRegionOutage started (issue 13), first: jobs
        into an out region wait for it, so the cluster would not settle."""
        for region in REGIONS:
            admin = self._admin(region)
            if admin.GetRegionOutage(pb.GetRegionOutageRequest(), timeout=DEADLINE).out:
                admin.SetRegionOutage(pb.SetRegionOutageRequest(), timeout=DEADLINE)

    def _repair(self, snap: Snapshot) -> bool:
        """Remakes each part of the seeded state that is gone (or stuck in error); True if it
        made anything."""

        def rows(key: str, column: int, value: str) -> list[tuple[Any, ...]]:
            return [r for r in snap.tables[key] if r[column] == value]

        made = False
        seed = self.seed
        servers = rows(f"{SOURCE}/servers", 0, seed.server_id)
        if not servers or servers[0][4] != 2:  # gone, or not ACTIVE
            self._make_server()
            made = True
        backups = rows(f"{SOURCE}/backups", 0, seed.backup_id)
        if made or not backups or backups[0][6] != 2:  # gone, or not AVAILABLE
            self._make_backup()
            made = True
        if made or not rows(f"{SOURCE}/images", 0, seed.image_id):
            image = self._node(SOURCE).CreateImage(
                pb.CreateImageRequest(backup_id=seed.backup_id), timeout=DEADLINE
            )
            seed.image_id = image.image_id
            harvest(image, pin=True)
            made = True
        # R5 as configured: the target region accepts replication, the third region does not.
        for region, accepts in ((TARGET, True), (NO_REPLICATION, False)):
            info = self._node(region).GetRegionInfo(pb.GetRegionInfoRequest(), timeout=DEADLINE)
            if info.accepts_replication != accepts:
                self._admin(region).SetReplicationCapability(
                    pb.SetReplicationCapabilityRequest(accepts_replication=accepts),
                    timeout=DEADLINE,
                )
        target = self._node(TARGET).GetRegionInfo(pb.GetRegionInfoRequest(), timeout=DEADLINE)
        if not rows("coordinator/policies", 0, seed.policy_id):
            self._make_policy(target.accepts_replication)
            made = True
        if target.accepts_replication:
            if not rows(f"{TARGET}/backups", 0, seed.replica_id):
                self._make_replica()
                made = True
            pending = rows(f"{TARGET}/backups", 0, seed.pending_replica_id)
            if not pending or pending[0][6] != 4:  # gone, or no longer REPLICATING
                self._make_pending_replica()
                made = True
        return made

    def _make_server(self) -> None:
        stub = self._node(SOURCE)
        server = stub.CreateServer(
            pb.CreateServerRequest(
                name="seed", disks=[pb.DiskSpec(size_bytes=MIB), pb.DiskSpec(size_bytes=2 * MIB)]
            ),
            timeout=DEADLINE,
        )
        self.seed.server_id = server.server_id
        harvest(server, pin=True)
        writes = [(0, 0), (0, 3), (1, 0), (1, 17)]  # (disk, chunk)
        for disk, chunk in writes:
            self._made += 1
            data = _random_bytes(CHUNK, self._made)
            stub.WriteDisk(
                iter(
                    [
                        pb.WriteDiskRequest(
                            server_id=server.server_id,
                            disk_index=disk,
                            offset=chunk * CHUNK,
                            data=data,
                        )
                    ]
                ),
                timeout=DEADLINE,
            )
            POOLS.add("chunk", (chunk_hash(data), data), pin=True)
            POOLS.add("chunk_data", data, pin=True)

    def _make_backup(self) -> None:
        stub = self._node(SOURCE)
        backup = stub.CreateBackup(
            pb.CreateBackupRequest(server_id=self.seed.server_id, name="seed-backup"),
            timeout=DEADLINE,
        )
        last = backup
        for update in stub.WatchBackup(
            pb.GetBackupRequest(backup_id=backup.backup_id), timeout=DEADLINE
        ):
            last = update
        assert last.status == pb.BACKUP_STATUS_AVAILABLE, last
        self.seed.backup_id = backup.backup_id
        harvest(last, pin=True)
        for part in self._internal(SOURCE).GetBackupManifest(
            pb.GetBackupManifestRequest(backup_id=backup.backup_id), timeout=DEADLINE
        ):
            for e in part.entries:
                POOLS.add("hash", e.hash, pin=True)
                POOLS.add("manifest_entry", (e.disk_index, e.chunk_index, e.hash, e.length), True)

    def _make_policy(self, replication: bool) -> None:
        policy = cpb.Policy(
            region_id=SOURCE,
            name="seed-policy",
            backup_schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=0"),
            enabled=True,
        )
        if replication:  # R5: only while the target region accepts replication
            policy.replication.CopyFrom(
                cpb.PolicyReplication(
                    enabled=True,
                    target_region_id=TARGET,
                    schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=0"),
                )
            )
        created = self._coordinator().CreatePolicy(
            cpb.CreatePolicyRequest(policy=policy), timeout=DEADLINE
        )
        self.seed.policy_id = created.policy_id
        harvest(created, pin=True)
        try:
            self._coordinator().AddPolicyServers(
                cpb.PolicyServersRequest(
                    policy_id=created.policy_id, server_ids=[self.seed.server_id]
                ),
                timeout=DEADLINE,
            )
        except grpc.RpcError as exc:  # already in a policy the fuzzer made: fine
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc

    def _make_replica(self) -> None:
        coordinator = self._coordinator()
        try:
            job = coordinator.ReplicateBackup(
                cpb.ReplicateBackupRequest(
                    source_region_id=SOURCE,
                    backup_id=self.seed.backup_id,
                    target_region_id=TARGET,
                ),
                timeout=DEADLINE,
            )
        except grpc.RpcError as exc:  # R3: a replica the fuzzer made is there already
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc
            return
        last = job
        for update in coordinator.WatchReplicationJob(
            cpb.GetReplicationJobRequest(job_id=job.job_id), timeout=DEADLINE
        ):
            last = update
        harvest(last, pin=True)
        if last.status == cpb.REPLICATION_JOB_STATUS_SUCCESS:
            self.seed.replica_id = last.replica_id
            POOLS.add("replica", last.replica_id, pin=True)

    def _make_pending_replica(self) -> None:
        """A replica in REPLICATING whose chunks no region holds, as a job leaves it after
        CreateReplica: WriteChunks, FindMissingChunks and CompleteReplica have work to do."""
        job_id = f"seed-{uuid.uuid4()}"
        header = pb.CreateReplicaHeader(
            project_id=f"{TARGET}_default",
            name="pending-seed",
            server_type=common_pb2.SERVER_TYPE_ECS,
            disks=[pb.BackupDisk(disk_index=0, size_bytes=MIB)],
            origin=pb.BackupOrigin(
                replicated=True,
                source_region_id=SOURCE,
                source_backup_id=self.seed.backup_id,
                way=common_pb2.REPLICATION_WAY_MANUAL,
                replication_job_id=job_id,
            ),
            job_id=job_id,
        )
        entries = [
            pb.ManifestEntry(disk_index=0, chunk_index=i, hash=digest, length=CHUNK)
            for i, (digest, _) in enumerate(self.seed.chunks)
        ]
        replica = self._internal(TARGET).CreateReplica(
            iter(
                [
                    pb.CreateReplicaRequest(header=header),
                    pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=entries)),
                    pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=len(entries))),
                ]
            ),
            timeout=DEADLINE,
        )
        self.seed.pending_replica_id = replica.backup_id
        POOLS.add("replica", replica.backup_id, pin=True)
        POOLS.add("job", job_id, pin=True)
        for entry in entries:
            POOLS.add("manifest_entry", (0, entry.chunk_index, entry.hash, CHUNK), pin=True)
        for digest, data in self.seed.chunks:
            POOLS.add("hash", digest, pin=True)
            POOLS.add("chunk", (digest, data), pin=True)
            POOLS.add("chunk_data", data, pin=True)


def live_ids(snap: Snapshot) -> dict[str, set[Any]]:
    """The IDs that exist in a snapshot, by pool kind."""

    def column(table: str, index: int) -> set[Any]:
        return {
            row[index]
            for key, rows in snap.tables.items()
            if key.endswith(f"/{table}")
            for row in rows
        }

    backups = column("backups", 0)
    return {
        "server": column("servers", 0),
        "disk": column("disks", 0),
        "backup": backups,
        "replica": backups,
        "image": column("images", 0),
        "policy": column("policies", 0),
        "job": column("jobs", 0) | column("backups", 18) | column("holds", 1),
    }


HARVEST_KINDS = {
    "backup_id": "backup",
    "source_backup_id": "backup",
    "replica_id": "replica",
    "image_id": "image",
    "image_ids": "image",
    "policy_id": "policy",
    "job_id": "job",
    "job_ids": "job",
    "replication_job_id": "job",
    "disk_id": "disk",
    "next_page_token": "page_token",
}


def harvest(message: Message, pin: bool = False) -> None:
    """Adds the IDs an answer names to the pools. Servers only from Server messages, and only
    small ones: a fuzzed ReadDisk of a whole 8 TiB disk would run for hours."""
    if isinstance(message, pb.Server):
        if sum(d.size_bytes for d in message.disks) > HARVEST_MAX_SERVER_BYTES:
            return
        POOLS.add("server", message.server_id, pin)
    if isinstance(message, pb.Backup) and message.origin.replicated:
        POOLS.add("replica", message.backup_id, pin)
    if isinstance(message, pb.Backup):
        POOLS.add("backup", message.backup_id, pin)
    for fd, value in message.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if fd.is_repeated else [value]:
                harvest(item, pin)
        elif fd.type == FieldDescriptor.TYPE_STRING and fd.name in HARVEST_KINDS:
            for item in value if fd.is_repeated else [value]:
                POOLS.add(HARVEST_KINDS[fd.name], item, pin)


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    path: Path = write_cluster_config(
        tmp_path_factory.mktemp("fuzz"),
        chunk_size=CHUNK,
        simulated_clock=True,
        coordinator={"retry_budget_seconds": 10, "cleanup_interval_seconds": 0.5},
    )
    with Cluster(path) as cluster:
        cluster.start(coordinator=True)
        fuzz = Fuzzer(cluster)
        try:
            fuzz.seed_once()
            fuzz.settle()
            yield fuzz
        finally:
            fuzz.close()


def examples_for(rpc: Rpc) -> int:
    """More examples for requests with more fields (a policy has some thirty)."""
    return min(EXAMPLES_PER_RPC + 3 * len(_paths(rpc.method.input_type)), 150)


def check_call(
    fuzzer: Fuzzer, rpc: Rpc, data: st.DataObject, mutation: Mutation | None = None
) -> None:
    """One call: settle, draw the call, make it, and check what it did."""
    started = time.monotonic()
    before = fuzzer.settle()
    fuzzer.refresh_clock()
    call = data.draw(calls(rpc, mutation), label="call")
    outcome = fuzzer.call(call)
    FIGURES.record(call, outcome)
    fuzzer.check_alive()
    assert outcome.code not in BROKEN, f"{call!r} answered {outcome.code.name}: {outcome.details}"
    if outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert rpc.is_watch, f"{call!r} did not end within {DEADLINE}s"
    if outcome.code == grpc.StatusCode.OK:
        for answer in outcome.responses:
            harvest(answer)
    else:
        after = fuzzer.snapshot()
        assert before.tables == after.tables, (
            f"{call!r} was refused ({outcome.code.name}: {outcome.details}) but changed:\n"
            + before.diff(after)
        )
    FIGURES.seconds += time.monotonic() - started


@pytest.mark.parametrize("rpc", ALL_RPCS, ids=lambda rpc: rpc.name)
def test_no_rpc_fails_inside_and_a_refused_call_changes_nothing(fuzzer: Fuzzer, rpc: Rpc) -> None:
    @settings(
        max_examples=examples_for(rpc),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def examples(data: st.DataObject) -> None:
        check_call(fuzzer, rpc, data)

    examples()


LIMIT_CASES = [(rpc, mutation) for rpc in ALL_RPCS for mutation in limit_cases(rpc)]


def _case_id(case: tuple[Rpc, Mutation]) -> str:
    rpc, (path, value) = case
    shown = _short(value[0] if isinstance(value, list) else value)
    return f"{rpc.method.name}.{'.'.join(fd.name for fd in path)}={shown[:24]}"


@pytest.mark.parametrize("case", LIMIT_CASES, ids=[_case_id(c) for c in LIMIT_CASES])
def test_every_limit_of_every_field_is_refused_cleanly(
    fuzzer: Fuzzer, case: tuple[Rpc, Mutation]
) -> None:
    """The same properties, for sane calls with one field at or past its limit, for every such
    field and value: random mutants find these only by luck."""
    rpc, mutation = case

    @settings(
        max_examples=LIMIT_ROUNDS,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def rounds(data: st.DataObject) -> None:
        check_call(fuzzer, rpc, data, mutation)

    rounds()


def test_zz_fuzz_figures(fuzzer: Fuzzer, capsys: pytest.CaptureFixture[str]) -> None:
    """Reports what the fuzzing did, and that it reached every RPC of every service."""
    settled = fuzzer.settle()
    made = ", ".join(
        f"{table} {sum(len(v) for k, v in settled.tables.items() if k.endswith('/' + table))}"
        for table in ("servers", "backups", "images", "jobs", "policies")
    )
    lines = [
        "",
        f"fuzz: {sum(FIGURES.by_service.values())} calls in {FIGURES.seconds:.0f}s",
        "calls per service: "
        + ", ".join(f"{name} {n}" for name, n in sorted(FIGURES.by_service.items())),
        f"the cluster holds now: {made}; policy runs {fuzzer.count('policy_runs')}",
        "statuses: " + ", ".join(f"{name} {n}" for name, n in FIGURES.by_status.most_common()),
        *(
            f"  {service}: "
            + ", ".join(
                f"{code} {n}"
                for (s, code), n in FIGURES.by_service_status.most_common()
                if s == service
            )
            for service in sorted(FIGURES.by_service)
        ),
        "OK answers per RPC: "
        + ", ".join(
            f"{rpc.name} {FIGURES.ok_by_rpc[rpc.name]}/{FIGURES.by_rpc[rpc.name]}"
            for rpc in ALL_RPCS
        ),
    ]
    with capsys.disabled():
        print("\n".join(lines))
    missed = [rpc.name for rpc in ALL_RPCS if not FIGURES.by_rpc[rpc.name]]
    assert not missed, f"never called: {missed}"
