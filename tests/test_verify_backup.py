"""Issue 10, a tool that says whether a backup is whole: VerifyBackup (and `csbs backup verify`)
reads every chunk of a backup against its hash, through the real gRPC surface of a real node.
A damaged chunk makes every backup that names it ERROR, saying how many chunks are bad, so that
GetBackup never shows AVAILABLE for a backup that cannot be restored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub, RegionNodeStub
from region_node.storage.chunk_store import PACK_HEADER, RECORD_HEADER, chunk_hash
from tests.harness import ACCOUNT_TOKENS, DEFAULT_ACCOUNT, Cluster
from tests.node_helpers import (
    MIB,
    backup,
    make_server,
    node_with_deadline,
    refusal,
    seeded_bytes,
    write,
)

pytestmark = pytest.mark.timeout(180)

REGION = "cn-north-4"
CSBS = Path(sys.executable).parent / "csbs"


def _verify(stub: RegionNodeStub, backup_id: str) -> list[pb.VerifyBackupProgress]:
    return list(stub.VerifyBackup(pb.VerifyBackupRequest(backup_id=backup_id), timeout=60))


def _flip_a_byte_of_chunk(chunks_dir: Path, digest: bytes) -> None:
    """Damages the stored copy of a chunk: walks the pack records (hash, length, version)."""
    for pack in sorted(chunks_dir.glob("*.pack")):
        with pack.open("r+b") as f:
            at = f.seek(PACK_HEADER.size)
            while header := f.read(RECORD_HEADER.size):
                if len(header) < RECORD_HEADER.size:
                    break
                found, length, _ = RECORD_HEADER.unpack(header)
                if found == digest:
                    f.seek(at + RECORD_HEADER.size + 1000)
                    byte = f.read(1)
                    f.seek(at + RECORD_HEADER.size + 1000)
                    f.write(bytes([byte[0] ^ 0x5A]))
                    return
                at += RECORD_HEADER.size + length
                f.seek(at)
    raise AssertionError(f"chunk {digest.hex()} is in no pack")


def _csbs(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBS_")}
    env.update(CSBS_CONFIG=str(cluster.config.path), CSBS_TOKEN=ACCOUNT_TOKENS[DEFAULT_ACCOUNT])
    return subprocess.run(
        [str(CSBS), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_verify_backup_reads_every_chunk_and_marks_every_backup_naming_a_damaged_one(
    cluster: Cluster,
) -> None:
    stub = node_with_deadline(cluster.channel(REGION))
    server = make_server(stub, [16])
    data = seeded_bytes(1, 12 * MIB)
    write(stub, server.server_id, 0, 0, data)
    first = backup(stub, server.server_id)
    write(stub, server.server_id, 0, 8 * MIB, seeded_bytes(2, MIB))  # chunk 8 changes
    second = backup(stub, server.server_id)  # shares chunks 0-7 and 9-11 with the first

    whole = _verify(stub, second.backup_id)
    last = whole[-1]
    assert last.done and not any(p.done for p in whole[:-1])
    assert (last.chunks_total, last.chunks_checked, last.chunks_bad) == (12, 12, 0)
    assert last.bytes_total == last.bytes_checked == 12 * MIB
    assert last.backup.status == pb.BACKUP_STATUS_AVAILABLE
    done = _csbs(cluster, "backup", "verify", second.backup_id)
    assert done.returncode == 0, done.stderr
    assert "12 chunks (12 MiB) checked, 0 damaged or missing; status available" in done.stdout

    # Chunk 0, which both backups name.
    _flip_a_byte_of_chunk(cluster.config.region(REGION).data_dir / "chunks", chunk_hash(data[:MIB]))
    found = _verify(stub, second.backup_id)[-1]
    assert (found.chunks_checked, found.chunks_bad) == (12, 1)
    assert found.backup.status == pb.BACKUP_STATUS_ERROR
    assert "VerifyBackup: 1 of 12 chunks are damaged or missing" in found.backup.error_reason
    # The first backup names the same chunk: it says so too, without having been verified.
    older = stub.GetBackup(pb.GetBackupRequest(backup_id=first.backup_id))
    assert older.status == pb.BACKUP_STATUS_ERROR
    assert "damaged or missing" in older.error_reason
    # Neither can make an image now (P4: only an available backup).
    code, _ = refusal(lambda: stub.CreateImage(pb.CreateImageRequest(backup_id=first.backup_id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION

    refused = _csbs(cluster, "backup", "verify", second.backup_id)
    assert refused.returncode == 1, refused
    assert "1 damaged or missing; status error" in refused.stdout
    assert "VerifyBackup: 1 of 12 chunks" in refused.stderr

    # A new backup of the same disk stores the damaged chunk anew and is whole.
    third = backup(stub, server.server_id)
    assert _verify(stub, third.backup_id)[-1].chunks_bad == 0


def test_verify_backup_refuses_a_replica_still_being_copied_and_an_unknown_backup(
    cluster: Cluster,
) -> None:
    stub = RegionNodeStub(cluster.channel(REGION))
    internal = RegionNodeInternalStub(cluster.channel(REGION))
    header = pb.CreateReplicaHeader(
        project_id=f"{REGION}_default",
        name="copying",
        server_type=common_pb2.SERVER_TYPE_ECS,
        disks=[pb.BackupDisk(disk_index=0, disk_id="d0", size_bytes=MIB)],
        origin=pb.BackupOrigin(
            replicated=True,
            source_region_id="cn-east-3",
            source_project_id="cn-east-3_default",
            source_backup_id="b0",
        ),
        job_id="verify-job",
    )
    entry = pb.ManifestEntry(disk_index=0, chunk_index=0, hash=bytes(range(32)), length=MIB)
    replica = internal.CreateReplica(
        iter(
            [
                pb.CreateReplicaRequest(header=header),
                pb.CreateReplicaRequest(manifest=pb.ManifestPart(entries=[entry])),
                pb.CreateReplicaRequest(end=pb.ManifestEnd(entries=1)),
            ]
        ),
        timeout=30,
    )
    assert replica.status == pb.BACKUP_STATUS_REPLICATING
    code, details = refusal(lambda: _verify(stub, replica.backup_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "replicating" in details
    code, _ = refusal(lambda: _verify(stub, "no-such-backup"))
    assert code == grpc.StatusCode.NOT_FOUND
