"""Bad input to a region node gets a clear refusal and changes nothing.

Through the real gRPC surface of a real node process: unknown IDs and projects are NOT_FOUND;
the limits of region_node.proto (disks, writes, P1 names, P2 descriptions, request IDs, page
tokens and sizes) are INVALID_ARGUMENT naming the field or the rule; what a resource's state
forbids is FAILED_PRECONDITION naming why. After every refusal the catalog (servers, backups,
images and their statuses), the disk files and the disks' bytes are as they were. Also what a
client needs to retry and page safely: request_id idempotency and stable pagination."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest

from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeStub
from tests.harness import Cluster
from tests.node_helpers import (
    MIB,
    all_backups,
    all_images,
    all_servers,
    backup,
    make_server,
    node_with_deadline,
    read,
    refusal,
    seeded_bytes,
    wait_backup,
    wait_until,
    write,
)

pytestmark = pytest.mark.timeout(120)

REGION = "cn-north-4"
# A region whose second project no other test of this module touches: exact page counts.
PAGING_REGION, PAGING_PROJECT = "cn-east-3", "cn-east-3_dr"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
DEADLINE = 30.0  # seconds, for every call
TIB = 1 << 40
# P1, spelled out as in the spec: CJK U+4E00-U+9FFF, ASCII letters and digits, '_' and '-'.
P1_NAME = re.compile(r"[\u4e00-\u9fffA-Za-z0-9_-]{1,255}", re.ASCII)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class Target:
    """A server with data on two disks, two available backups of it and an image of the first:
    what every refusal below must leave alone."""

    server_id: str
    backup_id: str  # has an image
    second_backup_id: str  # has none
    image_id: str
    disks: tuple[bytes, bytes]


Call = Callable[[RegionNodeStub, Target], object]


@pytest.fixture(scope="module")
def stub(shared_cluster: Cluster) -> RegionNodeStub:
    return node_with_deadline(shared_cluster.channel(REGION))


@pytest.fixture(scope="module")
def target(stub: RegionNodeStub) -> Target:
    server = make_server(stub, [4, 2], name="target")
    disks = (seeded_bytes(101, 4 * MIB), seeded_bytes(102, 2 * MIB))
    for index, data in enumerate(disks):
        write(stub, server.server_id, index, 0, data)
    first = backup(stub, server.server_id)
    second = backup(stub, server.server_id)
    image = stub.CreateImage(pb.CreateImageRequest(backup_id=first.backup_id), timeout=DEADLINE)
    return Target(server.server_id, first.backup_id, second.backup_id, image.image_id, disks)


@dataclass(frozen=True)
class Snapshot:
    servers: tuple[tuple[str, int], ...]
    backups: tuple[tuple[str, int, tuple[str, ...]], ...]
    images: tuple[str, ...]
    disk_files: frozenset[str]


def snapshot(cluster: Cluster, stub: RegionNodeStub) -> Snapshot:
    disk_dir = cluster.config.region(REGION).data_dir / "disks"
    return Snapshot(
        servers=tuple((s.server_id, s.status) for s in all_servers(stub)),
        backups=tuple((b.backup_id, b.status, tuple(b.image_ids)) for b in all_backups(stub)),
        images=tuple(i.image_id for i in all_images(stub)),
        disk_files=frozenset(p.name for p in disk_dir.iterdir()),
    )


@contextmanager
def nothing_changes(cluster: Cluster, stub: RegionNodeStub, target: Target) -> Iterator[None]:
    """Checks that the catalog, the disk files and the target's bytes are the same after."""
    before = snapshot(cluster, stub)
    yield
    assert snapshot(cluster, stub) == before
    for index, data in enumerate(target.disks):
        assert read(stub, target.server_id, index) == data, f"disk {index} changed"


def assert_refused(call: Callable[[], object], code: grpc.StatusCode, *mentions: str) -> str:
    got, details = refusal(call)
    assert got == code, f"{got} ({details!r}), expected {code}"
    for mention in mentions:
        assert mention in details, f"{details!r} does not mention {mention!r}"
    return details


def one_write(
    server_id: str, offset: int, data: bytes, disk_index: int = 0, project_id: str = ""
) -> Iterator[pb.WriteDiskRequest]:
    return iter(
        [
            pb.WriteDiskRequest(
                project_id=project_id,
                server_id=server_id,
                disk_index=disk_index,
                offset=offset,
                data=data,
            )
        ]
    )


# -- unknown IDs and projects ------------------------------------------------------------------
UNKNOWN_ID_CALLS: list[tuple[str, Call, str]] = [
    ("GetServer", lambda s, t: s.GetServer(pb.GetServerRequest(server_id=UNKNOWN_ID)), "server"),
    (
        "DeleteServer",
        lambda s, t: s.DeleteServer(pb.DeleteServerRequest(server_id=UNKNOWN_ID)),
        "server",
    ),
    (
        "WatchServer",
        lambda s, t: s.WatchServer(pb.GetServerRequest(server_id=UNKNOWN_ID), timeout=DEADLINE),
        "server",
    ),
    ("WriteDisk", lambda s, t: s.WriteDisk(one_write(UNKNOWN_ID, 0, b"x")), "server"),
    (
        "ReadDisk",
        lambda s, t: s.ReadDisk(pb.ReadDiskRequest(server_id=UNKNOWN_ID), timeout=DEADLINE),
        "server",
    ),
    (
        "CreateBackup",
        lambda s, t: s.CreateBackup(pb.CreateBackupRequest(server_id=UNKNOWN_ID)),
        "server",
    ),
    ("GetBackup", lambda s, t: s.GetBackup(pb.GetBackupRequest(backup_id=UNKNOWN_ID)), "backup"),
    (
        "DeleteBackup",
        lambda s, t: s.DeleteBackup(pb.DeleteBackupRequest(backup_id=UNKNOWN_ID)),
        "backup",
    ),
    (
        "WatchBackup",
        lambda s, t: s.WatchBackup(pb.GetBackupRequest(backup_id=UNKNOWN_ID), timeout=DEADLINE),
        "backup",
    ),
    (
        "RestoreBackup",
        lambda s, t: s.RestoreBackup(pb.RestoreBackupRequest(backup_id=UNKNOWN_ID)),
        "backup",
    ),
    (
        "CreateImage",
        lambda s, t: s.CreateImage(pb.CreateImageRequest(backup_id=UNKNOWN_ID)),
        "backup",
    ),
    ("GetImage", lambda s, t: s.GetImage(pb.GetImageRequest(image_id=UNKNOWN_ID)), "image"),
    (
        "DeleteImage",
        lambda s, t: s.DeleteImage(pb.DeleteImageRequest(image_id=UNKNOWN_ID)),
        "image",
    ),
    (
        "CreateServer from an image",
        lambda s, t: s.CreateServer(pb.CreateServerRequest(image_id=UNKNOWN_ID)),
        "image",
    ),
]


@pytest.mark.parametrize(
    ("call", "resource"),
    [(c, r) for _, c, r in UNKNOWN_ID_CALLS],
    ids=[n for n, _, _ in UNKNOWN_ID_CALLS],
)
def test_unknown_ids_are_not_found(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, call: Call, resource: str
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(lambda: call(stub, target), NOT_FOUND, resource, UNKNOWN_ID)


def _in_project(project: str) -> list[tuple[str, Call]]:
    """Every call, on the target's real IDs, but in `project`."""
    p = project
    return [
        (
            "GetServer",
            lambda s, t: s.GetServer(pb.GetServerRequest(project_id=p, server_id=t.server_id)),
        ),
        (
            "DeleteServer",
            lambda s, t: s.DeleteServer(
                pb.DeleteServerRequest(project_id=p, server_id=t.server_id)
            ),
        ),
        ("ListServers", lambda s, t: s.ListServers(pb.ListServersRequest(project_id=p))),
        (
            "CreateServer",
            lambda s, t: s.CreateServer(
                pb.CreateServerRequest(project_id=p, disks=[pb.DiskSpec(size_bytes=MIB)])
            ),
        ),
        (
            "WatchServer",
            lambda s, t: s.WatchServer(
                pb.GetServerRequest(project_id=p, server_id=t.server_id), timeout=DEADLINE
            ),
        ),
        (
            "WriteDisk",
            lambda s, t: s.WriteDisk(one_write(t.server_id, 0, b"x" * 4096, project_id=p)),
        ),
        (
            "ReadDisk",
            lambda s, t: s.ReadDisk(
                pb.ReadDiskRequest(project_id=p, server_id=t.server_id), timeout=DEADLINE
            ),
        ),
        (
            "CreateBackup",
            lambda s, t: s.CreateBackup(
                pb.CreateBackupRequest(project_id=p, server_id=t.server_id)
            ),
        ),
        (
            "GetBackup",
            lambda s, t: s.GetBackup(pb.GetBackupRequest(project_id=p, backup_id=t.backup_id)),
        ),
        ("ListBackups", lambda s, t: s.ListBackups(pb.ListBackupsRequest(project_id=p))),
        (
            "DeleteBackup",
            lambda s, t: s.DeleteBackup(
                pb.DeleteBackupRequest(project_id=p, backup_id=t.second_backup_id)
            ),
        ),
        (
            "WatchBackup",
            lambda s, t: s.WatchBackup(
                pb.GetBackupRequest(project_id=p, backup_id=t.backup_id), timeout=DEADLINE
            ),
        ),
        (
            "RestoreBackup",
            lambda s, t: s.RestoreBackup(
                pb.RestoreBackupRequest(project_id=p, backup_id=t.second_backup_id)
            ),
        ),
        (
            "CreateImage",
            lambda s, t: s.CreateImage(
                pb.CreateImageRequest(project_id=p, backup_id=t.second_backup_id)
            ),
        ),
        (
            "GetImage",
            lambda s, t: s.GetImage(pb.GetImageRequest(project_id=p, image_id=t.image_id)),
        ),
        ("ListImages", lambda s, t: s.ListImages(pb.ListImagesRequest(project_id=p))),
        (
            "DeleteImage",
            lambda s, t: s.DeleteImage(pb.DeleteImageRequest(project_id=p, image_id=t.image_id)),
        ),
    ]


# An ID no region has, and a real project of another region.
FOREIGN_PROJECTS = ("no-such-project", "cn-east-3_default")
PROJECT_CASES = [(p, n, c) for p in FOREIGN_PROJECTS for n, c in _in_project(p)]


@pytest.mark.parametrize(
    ("project", "call"),
    [(p, c) for p, _, c in PROJECT_CASES],
    ids=[f"{p}-{n}" for p, n, _ in PROJECT_CASES],
)
def test_unknown_projects_are_not_found_and_reach_nothing(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, project: str, call: Call
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(lambda: call(stub, target), NOT_FOUND, "project", project)


def test_a_server_is_not_found_from_another_project_of_its_region(
    shared_cluster: Cluster,
) -> None:
    east = node_with_deadline(shared_cluster.channel("cn-east-3"))
    server = make_server(east, [1], project_id="cn-east-3_default")
    assert_refused(
        lambda: east.GetServer(
            pb.GetServerRequest(project_id="cn-east-3_dr", server_id=server.server_id)
        ),
        NOT_FOUND,
        "server",
        server.server_id,
    )
    assert_refused(
        lambda: east.DeleteServer(
            pb.DeleteServerRequest(project_id="cn-east-3_dr", server_id=server.server_id)
        ),
        NOT_FOUND,
        server.server_id,
    )
    found = east.GetServer(
        pb.GetServerRequest(project_id="cn-east-3_default", server_id=server.server_id)
    )
    assert found.status == pb.SERVER_STATUS_ACTIVE


# -- disks ------------------------------------------------------------------------------------
DISK_CASES: list[tuple[str, list[int], tuple[str, ...]]] = [
    ("size-0", [0], ("disks[0].size_bytes", "1 MiB to 8 TiB")),
    ("half-a-mib", [MIB // 2], ("disks[0].size_bytes", "multiple of 1 MiB")),
    ("not-a-mib-multiple", [5 * MIB + 1], ("disks[0].size_bytes", "multiple of 1 MiB")),
    ("over-8-tib", [8 * TIB + MIB], ("disks[0].size_bytes", "8 TiB")),
    ("second-disk-bad", [MIB, 3 * MIB + 512], ("disks[1].size_bytes",)),
    ("no-disks", [], ("disks", "1 to 24")),
    ("25-disks", [MIB] * 25, ("disks", "1 to 24", "25")),
]


@pytest.mark.parametrize(
    ("sizes", "mentions"),
    [(s, m) for _, s, m in DISK_CASES],
    ids=[n for n, _, _ in DISK_CASES],
)
def test_disks_outside_the_limits_are_refused_and_no_server_is_created(
    shared_cluster: Cluster,
    stub: RegionNodeStub,
    target: Target,
    sizes: list[int],
    mentions: tuple[str, ...],
) -> None:
    request = pb.CreateServerRequest(disks=[pb.DiskSpec(size_bytes=s) for s in sizes])
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(lambda: stub.CreateServer(request, timeout=DEADLINE), INVALID, *mentions)


def test_disks_at_the_limits_are_accepted(stub: RegionNodeStub) -> None:
    smallest = make_server(stub, [1])
    assert [d.size_bytes for d in smallest.disks] == [MIB]
    most = make_server(stub, [1] * 24)
    assert [d.disk_index for d in most.disks] == list(range(24))
    assert [d.system for d in most.disks] == [True] + [False] * 23


def test_a_disk_of_exactly_8_tib_is_accepted(shared_cluster: Cluster, stub: RegionNodeStub) -> None:
    """8 TiB is inside the limit ("1 MiB to 8 TiB"), so a server with such a disk is created;
    the disk is sparse, so it costs nothing until written."""
    disk_dir = shared_cluster.config.region(REGION).data_dir / "disks"
    files_before = {p.name for p in disk_dir.iterdir()}
    try:
        server = stub.CreateServer(
            pb.CreateServerRequest(disks=[pb.DiskSpec(size_bytes=8 * TIB)]), timeout=DEADLINE
        )
    except grpc.RpcError as exc:
        leaked = sorted({p.name for p in disk_dir.iterdir()} - files_before)
        raise AssertionError(
            f"an 8 TiB disk was refused with {exc.code()} ({exc.details()!r}); disk files left "
            f"behind: {leaked}"
        ) from None
    assert [d.size_bytes for d in server.disks] == [8 * TIB]
    end = 8 * TIB - 4096
    write(stub, server.server_id, 0, end, seeded_bytes(103, 4096))
    assert read(stub, server.server_id, 0, end, 4096) == seeded_bytes(103, 4096)


OTHER_BAD_REQUESTS: list[tuple[str, Call, grpc.StatusCode, tuple[str, ...]]] = [
    (
        "server-type-unknown",
        lambda s, t: s.CreateServer(
            pb.CreateServerRequest(server_type=7, disks=[pb.DiskSpec(size_bytes=MIB)])  # type: ignore[arg-type]
        ),
        INVALID,
        ("server_type",),
    ),
    (
        "disks-and-image",
        lambda s, t: s.CreateServer(
            pb.CreateServerRequest(image_id=t.image_id, disks=[pb.DiskSpec(size_bytes=MIB)])
        ),
        INVALID,
        ("disks", "image_id"),
    ),
    (
        "backup-disk-named-twice",
        lambda s, t: s.CreateBackup(
            pb.CreateBackupRequest(server_id=t.server_id, disk_indexes=[0, 0])
        ),
        INVALID,
        ("disk_indexes",),
    ),
    (
        "backup-disk-unknown",
        lambda s, t: s.CreateBackup(
            pb.CreateBackupRequest(server_id=t.server_id, disk_indexes=[0, 5])
        ),
        INVALID,
        ("disk_indexes", "5"),
    ),
    (
        "list-backups-unknown-status",
        lambda s, t: s.ListBackups(pb.ListBackupsRequest(status=99)),  # type: ignore[arg-type]
        INVALID,
        ("status",),
    ),
    (
        "read-past-the-end",
        lambda s, t: s.ReadDisk(
            pb.ReadDiskRequest(server_id=t.server_id, offset=4 * MIB - 10, length=11),
            timeout=DEADLINE,
        ),
        INVALID,
        ("offset", "end of the disk"),
    ),
    (
        "read-offset-past-the-end",
        lambda s, t: s.ReadDisk(
            pb.ReadDiskRequest(server_id=t.server_id, offset=4 * MIB + 1), timeout=DEADLINE
        ),
        INVALID,
        ("offset", "end of the disk"),
    ),
    (
        "read-unknown-disk",
        lambda s, t: s.ReadDisk(
            pb.ReadDiskRequest(server_id=t.server_id, disk_index=2), timeout=DEADLINE
        ),
        INVALID,
        ("disk_index 2",),
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "mentions"),
    [(c, k, m) for _, c, k, m in OTHER_BAD_REQUESTS],
    ids=[n for n, _, _, _ in OTHER_BAD_REQUESTS],
)
def test_malformed_requests_are_refused(
    shared_cluster: Cluster,
    stub: RegionNodeStub,
    target: Target,
    call: Call,
    code: grpc.StatusCode,
    mentions: tuple[str, ...],
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(lambda: call(stub, target), code, *mentions)


# -- writes -----------------------------------------------------------------------------------
WRITE_CASES: list[tuple[str, int, int, int, tuple[str, ...]]] = [
    # name, disk index, offset, length, mentions
    ("straddles-the-end", 0, 4 * MIB - 100, 200, ("offset", "end of the disk")),
    ("starts-at-the-end", 0, 4 * MIB, 1, ("offset", "end of the disk")),
    ("far-past-the-end", 1, 1 << 62, 4096, ("offset", "end of the disk")),
    ("4-mib-and-1-byte", 0, 0, 4 * MIB + 1, ("data", str(4 * MIB + 1), "at most")),
    ("unknown-disk", 2, 0, 4096, ("disk_index 2",)),
]


@pytest.mark.parametrize(
    ("disk_index", "offset", "length", "mentions"),
    [(i, o, n, m) for _, i, o, n, m in WRITE_CASES],
    ids=[c[0] for c in WRITE_CASES],
)
def test_writes_outside_the_limits_are_refused_and_leave_the_disk_as_it_was(
    shared_cluster: Cluster,
    stub: RegionNodeStub,
    target: Target,
    disk_index: int,
    offset: int,
    length: int,
    mentions: tuple[str, ...],
) -> None:
    data = seeded_bytes(104, length)
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(
            lambda: stub.WriteDisk(one_write(target.server_id, offset, data, disk_index)),
            INVALID,
            *mentions,
        )


def test_a_write_of_exactly_4_mib_up_to_the_end_is_accepted(stub: RegionNodeStub) -> None:
    server = make_server(stub, [8])
    data = seeded_bytes(105, 4 * MIB)
    answer = stub.WriteDisk(one_write(server.server_id, 4 * MIB, data), timeout=DEADLINE)
    assert answer.bytes_written == 4 * MIB
    assert read(stub, server.server_id, 0, 4 * MIB) == data


# -- names (P1), descriptions (P2), request IDs -------------------------------------------------
def _create(
    kind: str,
    stub: RegionNodeStub,
    target: Target,
    name: str = "",
    description: str = "",
    request_id: str = "",
) -> str:
    """Creates a server, backup or image and returns its ID (a backup is waited for, so that
    the next one may start). A server has no description."""
    if kind == "server":
        server: pb.Server = stub.CreateServer(
            pb.CreateServerRequest(
                disks=[pb.DiskSpec(size_bytes=MIB)], name=name, request_id=request_id
            ),
            timeout=DEADLINE,
        )
        return server.server_id
    if kind == "backup":
        created: pb.Backup = stub.CreateBackup(
            pb.CreateBackupRequest(
                server_id=target.server_id,
                name=name,
                description=description,
                request_id=request_id,
            ),
            timeout=DEADLINE,
        )
        assert wait_backup(stub, created.backup_id).status == pb.BACKUP_STATUS_AVAILABLE
        return created.backup_id
    image: pb.Image = stub.CreateImage(
        pb.CreateImageRequest(
            backup_id=target.backup_id, name=name, description=description, request_id=request_id
        ),
        timeout=DEADLINE,
    )
    return image.image_id


def _get(kind: str, stub: RegionNodeStub, resource_id: str) -> pb.Server | pb.Backup | pb.Image:
    if kind == "server":
        server: pb.Server = stub.GetServer(pb.GetServerRequest(server_id=resource_id))
        return server
    if kind == "backup":
        taken: pb.Backup = stub.GetBackup(pb.GetBackupRequest(backup_id=resource_id))
        return taken
    image: pb.Image = stub.GetImage(pb.GetImageRequest(image_id=resource_id))
    return image


KINDS = ("server", "backup", "image")
BAD_NAMES: dict[str, str] = {
    "256-characters": "a" * 256,
    "256-chinese-characters": "备" * 256,
    "space": "web 01",
    "slash": "web/01",
    "dot": "web.01",
    "trailing-newline": "web01\n",
    "tab": "web\t01",
    "accented-letter": "café",
    "fullwidth-digit": "web１",
    "arabic-indic-digit": "web٣",
    "cjk-extension-a": "\u3400",
    "cjk-compatibility-ideograph": "\uf900",
    "hiragana": "バックアップ",
    "fullwidth-underscore": "a＿b",
}
NAME_CASES = [(k, n, v) for k in KINDS for n, v in BAD_NAMES.items()]


@pytest.mark.parametrize(
    ("kind", "name"),
    [(k, v) for k, _, v in NAME_CASES],
    ids=[f"{k}-{n}" for k, n, _ in NAME_CASES],
)
def test_p1_names_follow_the_character_rule(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, kind: str, name: str
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(lambda: _create(kind, stub, target, name=name), INVALID, "P1", "name")


GOOD_NAMES = ("备份_副本-01", "a" * 255, "\u4e00\u9fff", "Z-9_z", "鿿" * 255)


@pytest.mark.parametrize("kind", KINDS)
def test_p1_valid_names_are_kept_and_an_empty_name_gets_a_valid_default(
    stub: RegionNodeStub, target: Target, kind: str
) -> None:
    for name in GOOD_NAMES:
        assert _get(kind, stub, _create(kind, stub, target, name=name)).name == name
    default = _get(kind, stub, _create(kind, stub, target, name="")).name
    assert P1_NAME.fullmatch(default), f"default {kind} name {default!r} breaks P1"


P2_CASES = [(k, d) for k in ("backup", "image") for d in ("d" * 256, "说" * 256)]


@pytest.mark.parametrize(
    ("kind", "description"), P2_CASES, ids=[f"{k}-{d[0]}x256" for k, d in P2_CASES]
)
def test_p2_descriptions_over_255_characters_are_refused(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, kind: str, description: str
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(
            lambda: _create(kind, stub, target, description=description),
            INVALID,
            "P2",
            "description",
        )


@pytest.mark.parametrize("kind", ("backup", "image"))
def test_p2_a_description_of_255_characters_is_accepted_however_many_bytes(
    stub: RegionNodeStub, target: Target, kind: str
) -> None:
    description = "说明 / 备注: notes." * 17  # any characters; 255 of them, 391 bytes in UTF-8
    assert (len(description), len(description.encode())) == (255, 391)
    got = _get(kind, stub, _create(kind, stub, target, description=description))
    assert not isinstance(got, pb.Server)
    assert got.description == description


BAD_REQUEST_IDS = {"65-characters": "r" * 65, "space": "retry 1", "dot": "retry.1", "cjk": "重试"}
REQUEST_ID_CASES = [(k, n, v) for k in KINDS for n, v in BAD_REQUEST_IDS.items()]


@pytest.mark.parametrize(
    ("kind", "request_id"),
    [(k, v) for k, _, v in REQUEST_ID_CASES],
    ids=[f"{k}-{n}" for k, n, _ in REQUEST_ID_CASES],
)
def test_malformed_request_ids_are_refused(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, kind: str, request_id: str
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(
            lambda: _create(kind, stub, target, request_id=request_id), INVALID, "request_id"
        )


def test_request_id_makes_create_server_backup_and_image_idempotent(
    stub: RegionNodeStub, target: Target
) -> None:
    request_id = "create-" + "x" * 57  # 64 characters, the longest allowed
    servers = len(all_servers(stub))
    server = stub.CreateServer(
        pb.CreateServerRequest(disks=[pb.DiskSpec(size_bytes=2 * MIB)], request_id=request_id),
        timeout=DEADLINE,
    )
    # A retry returns the first server, even when the retry's other fields differ.
    again = stub.CreateServer(
        pb.CreateServerRequest(disks=[pb.DiskSpec(size_bytes=MIB)], request_id=request_id),
        timeout=DEADLINE,
    )
    assert again.server_id == server.server_id
    assert [d.size_bytes for d in again.disks] == [2 * MIB]
    assert len(all_servers(stub)) == servers + 1

    backups = len(all_backups(stub))
    taken = stub.CreateBackup(
        pb.CreateBackupRequest(server_id=target.server_id, request_id=request_id),
        timeout=DEADLINE,
    )
    while_running = stub.CreateBackup(
        pb.CreateBackupRequest(server_id=target.server_id, request_id=request_id),
        timeout=DEADLINE,
    )
    assert while_running.backup_id == taken.backup_id
    assert wait_backup(stub, taken.backup_id).status == pb.BACKUP_STATUS_AVAILABLE
    after = stub.CreateBackup(
        pb.CreateBackupRequest(server_id=target.server_id, request_id=request_id),
        timeout=DEADLINE,
    )
    assert after.backup_id == taken.backup_id
    assert after.status == pb.BACKUP_STATUS_AVAILABLE
    assert len(all_backups(stub)) == backups + 1

    images = len(all_images(stub))
    image_ids = {
        stub.CreateImage(
            pb.CreateImageRequest(backup_id=taken.backup_id, request_id=request_id),
            timeout=DEADLINE,
        ).image_id
        for _ in range(3)
    }
    assert len(image_ids) == 1
    assert len(all_images(stub)) == images + 1
    assert list(stub.GetBackup(pb.GetBackupRequest(backup_id=taken.backup_id)).image_ids) == [
        *image_ids
    ]


# -- state that forbids a request ----------------------------------------------------------------
def _gone(stub: RegionNodeStub, server_id: str) -> bool:
    try:
        stub.GetServer(pb.GetServerRequest(server_id=server_id), timeout=DEADLINE)
    except grpc.RpcError as exc:
        if exc.code() == NOT_FOUND:
            return True
        raise
    return False


@dataclass(frozen=True)
class _Race:
    """What DeleteServer and CreateBackup of one server answered when sent back to back."""

    server_id: str
    delete_code: grpc.StatusCode | None  # None: accepted
    backup_code: grpc.StatusCode | None
    backup_details: str
    backup: pb.Backup | None  # the backup, settled, when it was accepted

    @property
    def deleted(self) -> bool:
        # NOT_FOUND from a delete of a server that existed: the delete went through (and
        # answered wrongly; see test_delete_server_answers_with_the_deleting_server_...).
        return self.delete_code in (None, NOT_FOUND)


def _race_delete_and_backup(
    stub: RegionNodeStub, sizes_mib: list[int], backup_first: bool, data: bytes = b""
) -> _Race:
    """Sends DeleteServer and CreateBackup of a new server back to back, pipelined on the
    channel (neither waits for the other's answer), then settles what they started: a backup
    that was accepted is waited for, a server the delete did not take is deleted, and the
    server is gone before this returns."""
    server_id = make_server(stub, sizes_mib).server_id
    if data:
        write(stub, server_id, 0, 0, data)
    delete = functools.partial(
        stub.DeleteServer.future, pb.DeleteServerRequest(server_id=server_id), timeout=DEADLINE
    )
    create = functools.partial(
        stub.CreateBackup.future, pb.CreateBackupRequest(server_id=server_id), timeout=DEADLINE
    )
    if backup_first:
        backing_up, deleting = create(), delete()
    else:
        deleting, backing_up = delete(), create()
    delete_code: grpc.StatusCode | None = None
    try:
        deleting.result()
    except grpc.RpcError as exc:
        delete_code = exc.code()
    backup_code: grpc.StatusCode | None = None
    details = ""
    settled: pb.Backup | None = None
    try:
        settled = wait_backup(stub, backing_up.result().backup_id)
    except grpc.RpcError as exc:
        backup_code, details = exc.code(), exc.details() or ""
    try:
        server = stub.GetServer(pb.GetServerRequest(server_id=server_id), timeout=DEADLINE)
        if server.status != pb.SERVER_STATUS_DELETING:
            stub.DeleteServer(pb.DeleteServerRequest(server_id=server_id), timeout=DEADLINE)
    except grpc.RpcError as exc:
        if exc.code() != NOT_FOUND:  # gone already: what the cleanup wants
            raise
    wait_until(functools.partial(_gone, stub, server_id), timeout=30, what=f"{server_id} gone")
    return _Race(server_id, delete_code, backup_code, details, settled)


def test_a_server_being_deleted_cannot_be_backed_up(stub: RegionNodeStub) -> None:
    """DeleteServer answers DELETING at once and removes the disks in the background, within a
    few milliseconds; a CreateBackup sent right behind it (pipelined, not waiting for its
    answer) lands in that window most of the time. An attempt where the backup got in first
    proves nothing here and is retried (test_a_delete_racing_a_backup_never_
    leaves_a_broken_backup checks those)."""
    races: list[_Race] = []
    for _ in range(12):
        race = _race_delete_and_backup(stub, [4 * 1024 * 1024], backup_first=False)  # 4 TiB
        races.append(race)
        if race.backup_code is not None:
            assert race.backup_code in (FAILED, NOT_FOUND), race
            # Either way, no backup of the server was made.
            assert all_backups(stub, server_id=race.server_id) == []
        if race.deleted and race.backup_code == FAILED:
            assert race.server_id in race.backup_details, race
            assert "being deleted" in race.backup_details or "deleting" in race.backup_details
            return
    raise AssertionError(f"a backup was never asked for while its server was deleting: {races}")


ATTEMPTS = 300  # the window is narrow: a few percent of attempts land in it


def test_a_delete_racing_a_backup_never_leaves_a_broken_backup(stub: RegionNodeStub) -> None:
    """Sent together, either the delete goes first (and the backup is refused: the server is
    deleting or gone), or the backup does (and the delete is refused while it runs). Both may
    be accepted only when the backup had finished before the delete began, and then it is
    complete: never a backup that read disks while they were being removed."""
    broken: list[_Race] = []
    data = seeded_bytes(108, MIB)
    for attempt in range(ATTEMPTS):
        # Both orders of sending, with and without data for the backup to read.
        written = data if attempt % 4 >= 2 else b""
        race = _race_delete_and_backup(stub, [1], backup_first=attempt % 2 == 1, data=written)
        assert race.delete_code in (None, FAILED, NOT_FOUND), race
        assert race.backup_code in (None, FAILED, NOT_FOUND), race
        if race.deleted and race.backup_code is None:
            backup = race.backup
            if (
                backup is None
                or backup.status != pb.BACKUP_STATUS_AVAILABLE
                or backup.error_reason
                or backup.bytes_read != len(written)
            ):
                broken.append(race)
    assert not broken, (
        f"{len(broken)} of {ATTEMPTS} servers were deleted under a backup; their backups: "
        + "; ".join(
            f"{b.backup_id} {pb.BackupStatus.Name(b.status)} {b.error_reason!r}"
            for b in (r.backup for r in broken)
            if b is not None
        )
    )


def test_delete_server_answers_with_the_deleting_server_however_fast_it_goes(
    stub: RegionNodeStub,
) -> None:
    """A delete that was accepted answers with the server in DELETING, even when the disks
    are removed before the answer is sent (many deletes at once make that likely); NOT_FOUND
    would tell the client the server never existed."""
    answers: list[tuple[str, str]] = []
    for _ in range(2):
        server_ids = [make_server(stub, [1]).server_id for _ in range(16)]
        deletes = [
            stub.DeleteServer.future(pb.DeleteServerRequest(server_id=i), timeout=DEADLINE)
            for i in server_ids
        ]
        for server_id, delete in zip(server_ids, deletes, strict=True):
            try:
                answer = delete.result()
                answers.append((server_id, pb.ServerStatus.Name(answer.status)))
                assert answer.server_id == server_id
            except grpc.RpcError as exc:
                answers.append((server_id, f"{exc.code()} {exc.details()!r}"))
        for server_id in server_ids:
            wait_until(
                functools.partial(_gone, stub, server_id), timeout=30, what=f"{server_id} gone"
            )
    wrong = [a for a in answers if a[1] != "SERVER_STATUS_DELETING"]
    assert not wrong, f"{len(wrong)} of {len(answers)} accepted deletes answered: {wrong[:3]}"


def test_a_backup_with_an_image_cannot_be_deleted_until_the_image_is(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target
) -> None:
    server = make_server(stub, [2])
    write(stub, server.server_id, 0, 0, seeded_bytes(106, 2 * MIB))
    taken = backup(stub, server.server_id)
    image = stub.CreateImage(pb.CreateImageRequest(backup_id=taken.backup_id), timeout=DEADLINE)

    with nothing_changes(shared_cluster, stub, target):
        assert_refused(
            lambda: stub.DeleteBackup(
                pb.DeleteBackupRequest(backup_id=taken.backup_id), timeout=DEADLINE
            ),
            FAILED,
            taken.backup_id,
            image.image_id,
        )
    assert stub.GetBackup(pb.GetBackupRequest(backup_id=taken.backup_id)).status == (
        pb.BACKUP_STATUS_AVAILABLE
    )

    stub.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id), timeout=DEADLINE)
    freed = stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=taken.backup_id), timeout=DEADLINE)
    assert freed.bytes_freed == 2 * MIB
    assert_refused(
        lambda: stub.GetBackup(pb.GetBackupRequest(backup_id=taken.backup_id)),
        NOT_FOUND,
        taken.backup_id,
    )
    assert_refused(
        lambda: stub.DeleteBackup(pb.DeleteBackupRequest(backup_id=taken.backup_id)),
        NOT_FOUND,
        taken.backup_id,
    )


# -- pages ------------------------------------------------------------------------------------
def _tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[-1] ^= 0x01  # the last digit of the position: a different, unsigned page
    return base64.urlsafe_b64encode(bytes(raw)).decode()


NEVER_ISSUED = {
    "word": "not-a-token",
    "punctuation": "!!!",
    "random-base64": base64.urlsafe_b64encode(seeded_bytes(107, 48)).decode(),
    "not-ascii": "令牌",
    "long": "A" * 4096,
}


@pytest.mark.parametrize("token", NEVER_ISSUED.values(), ids=NEVER_ISSUED.keys())
def test_page_tokens_never_issued_are_refused(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, token: str
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        assert_refused(
            lambda: stub.ListServers(pb.ListServersRequest(page_token=token)), INVALID, "page_token"
        )
        assert_refused(
            lambda: stub.ListBackups(pb.ListBackupsRequest(page_token=token)), INVALID, "page_token"
        )
        assert_refused(
            lambda: stub.ListImages(pb.ListImagesRequest(page_token=token)), INVALID, "page_token"
        )


def test_page_tokens_of_another_list_or_filter_or_tampered_with_are_refused(
    stub: RegionNodeStub, target: Target
) -> None:
    make_server(stub, [1])  # at least two servers, so that a first page has a next
    stub.CreateImage(pb.CreateImageRequest(backup_id=target.second_backup_id), timeout=DEADLINE)
    servers_token = stub.ListServers(pb.ListServersRequest(page_size=1)).next_page_token
    images_token = stub.ListImages(pb.ListImagesRequest(page_size=1)).next_page_token
    backups_token = stub.ListBackups(
        pb.ListBackupsRequest(server_id=target.server_id, page_size=1)
    ).next_page_token
    assert servers_token and images_token and backups_token

    # Each works where it was issued...
    assert stub.ListServers(pb.ListServersRequest(page_size=1, page_token=servers_token)).servers
    assert stub.ListImages(pb.ListImagesRequest(page_size=1, page_token=images_token)).images
    assert stub.ListBackups(
        pb.ListBackupsRequest(server_id=target.server_id, page_size=1, page_token=backups_token)
    ).backups
    # ...and nowhere else.
    misuses: list[tuple[str, Callable[[], object]]] = [
        (
            "servers token for images",
            lambda: stub.ListImages(pb.ListImagesRequest(page_token=servers_token)),
        ),
        (
            "servers token for backups",
            lambda: stub.ListBackups(pb.ListBackupsRequest(page_token=servers_token)),
        ),
        (
            "images token for servers",
            lambda: stub.ListServers(pb.ListServersRequest(page_token=images_token)),
        ),
        (
            "backups token without the filter",
            lambda: stub.ListBackups(pb.ListBackupsRequest(page_token=backups_token)),
        ),
        (
            "backups token for another server",
            lambda: stub.ListBackups(
                pb.ListBackupsRequest(server_id=UNKNOWN_ID, page_token=backups_token)
            ),
        ),
        (
            "backups token with a status filter added",
            lambda: stub.ListBackups(
                pb.ListBackupsRequest(
                    server_id=target.server_id,
                    status=pb.BACKUP_STATUS_AVAILABLE,
                    page_token=backups_token,
                )
            ),
        ),
        (
            "servers token tampered with",
            lambda: stub.ListServers(pb.ListServersRequest(page_token=_tampered(servers_token))),
        ),
    ]
    for what, call in misuses:
        code, details = refusal(call)
        assert (code, "page_token" in details) == (INVALID, True), f"{what}: {code} {details!r}"


@pytest.mark.parametrize("page_size", (1001, 5000, 2**32 - 1))
def test_page_size_over_1000_is_refused(
    shared_cluster: Cluster, stub: RegionNodeStub, target: Target, page_size: int
) -> None:
    with nothing_changes(shared_cluster, stub, target):
        for call in (
            lambda: stub.ListServers(pb.ListServersRequest(page_size=page_size)),
            lambda: stub.ListBackups(pb.ListBackupsRequest(page_size=page_size)),
            lambda: stub.ListImages(pb.ListImagesRequest(page_size=page_size)),
        ):
            assert_refused(call, INVALID, "page_size", str(page_size), "1000")
    assert stub.ListServers(pb.ListServersRequest(page_size=1000)).servers


def test_pages_list_every_server_once_in_creation_order(shared_cluster: Cluster) -> None:
    stub = node_with_deadline(shared_cluster.channel(PAGING_REGION))
    created = [
        make_server(stub, [1], project_id=PAGING_PROJECT, name=f"page-{i}").server_id
        for i in range(5)
    ]
    pages: list[list[str]] = []
    token = ""
    for _ in range(10):
        answer = stub.ListServers(
            pb.ListServersRequest(project_id=PAGING_PROJECT, page_size=2, page_token=token)
        )
        pages.append([s.server_id for s in answer.servers])
        token = answer.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == created
    everything = stub.ListServers(pb.ListServersRequest(project_id=PAGING_PROJECT))
    assert [s.server_id for s in everything.servers] == created
    assert not everything.next_page_token
