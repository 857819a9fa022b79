"""Issue 13, a region's storage capacity: an operator gives a region's chunk store a capacity in
bytes (RegionNodeAdmin.SetRegionCapacity), and beyond it a write fails exactly as on a full disk
(tests/test_disk_full.py): RESOURCE_EXHAUSTED naming the region, here with its capacity and its
use; a backup that runs out ends in error saying so and gives back what it wrote; nothing
acknowledged is lost; a replication into the region fails saying it is full and leaves no
replica. The capacity is kept across a kill -9. Real region nodes and a real coordinator."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

import grpc
import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import quotas_pb2 as qpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub
from tests.harness import (
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
    DEFAULT_REGIONS,
    Cluster,
    write_cluster_config,
)
from tests.node_helpers import (
    MIB,
    all_backups,
    backup,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    server_from_backup,
    wait_backup,
    write,
)
from tests.replication_helpers import follow, replicate

pytestmark = pytest.mark.timeout(180)

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
RECORD = MIB + 40  # a 1 MiB chunk as the store holds it: its data and a 40-byte header
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    regions = [r for r in DEFAULT_REGIONS if r["id"] in (SOURCE, TARGET)]
    config = write_cluster_config(
        tmp_path_factory.mktemp("capacity"),
        regions=regions,
        coordinator={"retry_budget_seconds": 240, "cleanup_interval_seconds": 1.0},
    )
    with Cluster(config) as running:
        running.start(coordinator=True)
        yield running


@pytest.fixture(autouse=True)
def unlimited_after(cluster: Cluster) -> Iterator[None]:
    """Every test leaves both regions unlimited, whatever it set."""
    yield
    for region in (SOURCE, TARGET):
        _set(cluster, region, 0)


def _admin(cluster: Cluster, region: str) -> RegionNodeAdminStub:
    return RegionNodeAdminStub(cluster.channel(region))


def _capacity(cluster: Cluster, region: str) -> qpb.RegionCapacity:
    answer: qpb.RegionCapacity = _admin(cluster, region).GetRegionCapacity(
        qpb.GetRegionCapacityRequest(), timeout=30
    )
    return answer


def _set(cluster: Cluster, region: str, capacity: int) -> qpb.RegionCapacity:
    answer: qpb.RegionCapacity = _admin(cluster, region).SetRegionCapacity(
        qpb.SetRegionCapacityRequest(capacity_bytes=capacity), timeout=30
    )
    return answer


def _names_capacity_and_use(details: str, region: str, capacity: int) -> None:
    assert f"region {region} has no storage space left" in details, details
    assert f"its storage capacity is {_text(capacity)}" in details, details
    assert re.search(r"of which [0-9.]+ [KMG]?i?B \(\d+ bytes\) is used", details), details


def _text(n: int) -> str:
    """How messages name a size (csbs.errors.bytes_text) for the sizes these tests use."""
    mib = n / MIB
    shown = f"{mib:.1f}".removesuffix(".0")
    return f"{shown} MiB ({n} bytes)"


def test_a_region_counts_its_chunk_store_and_an_operator_sets_its_capacity(
    cluster: Cluster,
) -> None:
    stub = node(cluster.channel(SOURCE))
    before = _capacity(cluster, SOURCE)
    assert before.region_id == SOURCE and before.capacity_bytes == 0, before
    assert not before.set_by_operator
    server = make_server(stub, [8])
    write(stub, server.server_id, 0, 0, seeded_bytes(101, 3 * MIB))
    backup(stub, server.server_id)
    # Three new 1 MiB chunks; a server's disk is not the backup vault's and counts nothing.
    assert _capacity(cluster, SOURCE).used_bytes == before.used_bytes + 3 * RECORD

    changed = _set(cluster, SOURCE, 512 * MIB)
    assert (changed.capacity_bytes, changed.set_by_operator) == (512 * MIB, True)
    assert _capacity(cluster, SOURCE) == changed


def test_a_backup_beyond_the_capacity_fails_naming_it_and_earlier_backups_restore_exactly(
    cluster: Cluster,
) -> None:
    stub = node(cluster.channel(SOURCE))
    server = make_server(stub, [16])
    first = seeded_bytes(102, 4 * MIB)
    write(stub, server.server_id, 0, 0, first)
    kept = backup(stub, server.server_id)
    used = _capacity(cluster, SOURCE).used_bytes

    # Room for one more chunk, not for the four the next backup brings.
    capacity = used + RECORD + MIB // 2
    _set(cluster, SOURCE, capacity)
    write(stub, server.server_id, 0, 4 * MIB, seeded_bytes(103, 4 * MIB))
    created = stub.CreateBackup(pb.CreateBackupRequest(server_id=server.server_id), timeout=30)
    ended = wait_backup(stub, created.backup_id)
    assert ended.status == pb.BACKUP_STATUS_ERROR, ended
    assert f"region {SOURCE} ran out of storage space" in ended.error_reason, ended
    assert f"its storage capacity is {_text(capacity)}" in ended.error_reason, ended
    # What it wrote was given back: the store holds what it held before.
    assert _capacity(cluster, SOURCE).used_bytes == used

    # At its capacity the region refuses a backup at once, naming the capacity and its use.
    _set(cluster, SOURCE, used)
    code, details = refusal(
        lambda: stub.CreateBackup(pb.CreateBackupRequest(server_id=server.server_id), timeout=30)
    )
    assert code == EXHAUSTED, (code, details)
    _names_capacity_and_use(details, SOURCE, used)
    # Writing a server's disk goes on: the capacity is the backups'.
    write(stub, server.server_id, 0, 12 * MIB, seeded_bytes(104, MIB))

    # The backup taken before restores byte for byte.
    copy = server_from_backup(stub, kept.backup_id)
    assert (
        disk_sha256(stub, copy.server_id, 0) == hashlib.sha256(first + bytes(12 * MIB)).hexdigest()
    )

    # Raised again: backups work without a restart.
    _set(cluster, SOURCE, 0)
    assert backup(stub, server.server_id).status == pb.BACKUP_STATUS_AVAILABLE


def test_the_capacity_is_kept_across_a_kill_9_restart(cluster: Cluster) -> None:
    stub = node(cluster.channel(SOURCE))
    server = make_server(stub, [4])
    write(stub, server.server_id, 0, 0, seeded_bytes(105, MIB))
    used = _capacity(cluster, SOURCE).used_bytes
    _set(cluster, SOURCE, used)

    cluster.node(SOURCE).kill()
    cluster.node(SOURCE).restart()

    after = _capacity(cluster, SOURCE)
    assert (after.capacity_bytes, after.used_bytes, after.set_by_operator) == (used, used, True)
    stub = node(cluster.channel(SOURCE))
    code, details = refusal(
        lambda: stub.CreateBackup(pb.CreateBackupRequest(server_id=server.server_id), timeout=30)
    )
    assert code == EXHAUSTED, (code, details)
    _names_capacity_and_use(details, SOURCE, used)


def test_a_replication_into_a_region_at_its_capacity_fails_saying_so_and_leaves_no_replica(
    cluster: Cluster,
) -> None:
    coordinator = CoordinatorStub(cluster.coordinator_channel())
    north, east = node(cluster.channel(SOURCE)), node(cluster.channel(TARGET))
    server = make_server(north, [8])
    write(north, server.server_id, 0, 0, seeded_bytes(106, 4 * MIB))
    source = backup(north, server.server_id)
    target_used = _capacity(cluster, TARGET).used_bytes
    _set(cluster, TARGET, target_used + RECORD)  # one chunk of the four fits

    started = time.monotonic()
    job = replicate(coordinator, source.backup_id, SOURCE, TARGET)
    ended = follow(coordinator, job.job_id)[-1]
    assert ended.status == cpb.REPLICATION_JOB_STATUS_FAILED, ended
    assert time.monotonic() - started < 60, "a region at its capacity is not worth retrying"
    _names_capacity_and_use(ended.failure_reason, TARGET, target_used + RECORD)
    assert not [b for b in all_backups(east) if b.origin.replication_job_id == job.job_id]
    assert ended.cleanup_pending == "", ended.cleanup_pending
    # What arrived before the refusal went with the replica.
    assert _capacity(cluster, TARGET).used_bytes == target_used

    _set(cluster, TARGET, 0)
    again = replicate(coordinator, source.backup_id, SOURCE, TARGET)
    assert follow(coordinator, again.job_id)[-1].status == cpb.REPLICATION_JOB_STATUS_SUCCESS


def test_only_the_operator_reads_or_sets_a_capacity_and_bad_input_names_the_field(
    cluster: Cluster,
) -> None:
    plain = cluster.channel(SOURCE, account=None)
    as_user = [("authorization", f"Bearer {ACCOUNT_TOKENS[DEFAULT_ACCOUNT]}")]
    admin = RegionNodeAdminStub(plain)
    for call in (
        lambda: admin.SetRegionCapacity(
            qpb.SetRegionCapacityRequest(capacity_bytes=MIB), metadata=as_user, timeout=30
        ),
        lambda: admin.GetRegionCapacity(
            qpb.GetRegionCapacityRequest(), metadata=as_user, timeout=30
        ),
    ):
        assert refusal(call)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert _capacity(cluster, SOURCE).capacity_bytes == 0

    code, details = refusal(lambda: _set(cluster, SOURCE, (1 << 64) - 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "capacity_bytes" in details, details
