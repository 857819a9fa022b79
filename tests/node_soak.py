"""Issue 10: a seeded fault test of one region node, checked against a model.

Worker threads drive a real node with a seeded random mix of calls (writes, backups, images,
servers from images, restores, deletions, replicas made through the internal service) while a
fault thread kills it with SIGKILL and fills its filesystem, a tmpfs this engine mounts (root).
What the model holds the node to:
- an acknowledged write is on its disk; a write that failed leaves each page it touched as it
  was or as written (a page is the unit of a torn write), which the next read settles;
- a backup holds its disks as the model had them when CreateBackup answered (a lock per server
  keeps writes and CreateBackup of one server apart; writes after the answer run during it);
- no call answers INTERNAL or UNKNOWN; a backup or a server fill ends in ERROR only if a fault
  came meanwhile; an available backup stays available; nothing vanishes undeleted;
- a server made from a backup (image, restore) holds exactly the backup's point in time;
- at the end (filler freed, one restart) every available backup restores exactly, and once
  everything is deleted the catalog has no rows, no pack holds data and `disks/` is empty.

A failure names the seed and how to replay it: `make soak SEED=N SECONDS=S`, which runs
`python -m tests.node_soak --seed N --seconds S` and prints the report as one JSON line."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from csbs.config import ConfigError
from csbs.rpc import replaced, rewrite_calls
from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub, RegionNodeStub
from tests.harness import Cluster, stop_cleanly_on_sigterm, write_cluster_config
from tests.node_helpers import MIB, manifest_end
from tests.soak_model import (
    PAGE,
    BackupModel,
    DiskModel,
    Failure,
    Refused,
    ServerModel,
    SoakFailed,
    SoakReport,
)

REGION = "cn-north-4"
PROJECT = f"{REGION}_default"
TMPFS_MIB = 512
DEADLINE = 20.0  # seconds, for every call
WAIT = 60.0  # seconds, for anything to settle
WORKERS = 3
MAX_SERVERS, MAX_BACKUPS, MAX_IMAGES, MAX_REPLICAS = 5, 10, 3, 3
DISK_MIB = (4, 8, 16)
LOW_SPACE = 48 * MIB  # less room than this is a fault too (the disk filled up by itself)
FORBIDDEN = ("INTERNAL", "UNKNOWN")
TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "NO_CHANNEL")
INTERNAL: tuple[str, ...] = ("GetBackupManifest", "ReadChunks", "WriteChunks", "CreateReplica")
INTERNAL += ("FindMissingChunks", "CompleteReplica", "RemoveReplica")
# Codes the soak's calls should not earn but that do not fail it by themselves (a refusal in
# words): the first few are kept in the report with their details.
ODD = ("INVALID_ARGUMENT", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED")
MAX_ODD_ANSWERS = 20
STREAMS = ("ReadDisk", "GetBackupManifest", "ReadChunks")
TABLES: tuple[str, ...] = (
    "servers",
    "disks",
    "written_chunks",
    "backups",
    "backup_disks",
    "manifest_pages",
    "page_entries",
    "backup_pages",
)
TABLES += ("chunks", "images", "holds", "replica_arrivals", "replication_records")
CREATING, AVAILABLE = pb.BACKUP_STATUS_CREATING, pb.BACKUP_STATUS_AVAILABLE
ERROR, REPLICATING = pb.BACKUP_STATUS_ERROR, pb.BACKUP_STATUS_REPLICATING
SERVER_BUSY = (pb.SERVER_STATUS_CREATING, pb.SERVER_STATUS_RESTORING, pb.SERVER_STATUS_DELETING)


def _deadline(details: Any) -> Any:
    return details if details.timeout is not None else replaced(details, timeout=DEADLINE)


def _rid(rng: random.Random) -> str:
    return f"soak{rng.getrandbits(128):032x}"


class _Soak:
    def __init__(self, seed: int, seconds: float, cluster: Cluster) -> None:
        self.seed, self.seconds, self.cluster = seed, seconds, cluster
        self.node = cluster.node(REGION)
        self.node_dir = cluster.config.region(REGION).data_dir
        self.filler = self.node_dir.parent / "filler"
        self.report = SoakReport(seed, seconds)
        self.lock = threading.Lock()  # the model and the report
        self.channel_lock = threading.Lock()
        self.servers: dict[str, ServerModel] = {}
        self.backups: dict[str, BackupModel] = {}
        self.images: dict[str, str] = {}  # image ID -> backup ID
        self.deleting: set[str] = set()  # IDs a delete call is out for
        self.epoch, self.faulting = 0, False  # the epoch moves as each fault starts and ends
        self.stop, self.failure, self.end = threading.Event(), "", 0.0

    # -- calls ---------------------------------------------------------------------------------
    def count(self, key: str, what: str = "codes") -> None:
        with self.lock:
            counts: dict[str, int] = getattr(self.report, what)
            counts[key] = counts.get(key, 0) + 1

    def bump(self, what: str) -> None:
        with self.lock:
            setattr(self.report, what, getattr(self.report, what) + 1)

    def rpc(self, method: str, request: Any, **options: Any) -> Any:
        """One call with a deadline (a list is sent as a stream, a streamed answer is drained):
        INTERNAL or UNKNOWN fail the run, any other code is Refused."""
        self.count(method, "ops")
        try:
            with self.channel_lock:
                channel = rewrite_calls(self.cluster.channel(REGION), _deadline)
            stub = (RegionNodeInternalStub if method in INTERNAL else RegionNodeStub)(channel)
            sent = iter(request) if isinstance(request, list) else request
            answer = getattr(stub, method)(sent, **options)
            answer = list(answer) if method in STREAMS else answer
        except grpc.RpcError as exc:
            call = exc if isinstance(exc, grpc.Call) else None
            code = call.code().name if call else "RPC_ERROR"
            details = (call.details() if call else str(exc)) or ""
        except ValueError as exc:  # no address while the node restarts; a channel closed since
            if not isinstance(exc, ConfigError) and "channel" not in str(exc):
                raise
            code, details = "NO_CHANNEL", str(exc)
        else:
            self.count("OK")
            return answer
        self.count(code)
        if code in ODD:
            with self.lock:
                if len(self.report.odd_answers) < MAX_ODD_ANSWERS:
                    self.report.odd_answers.append(f"{method}: {code}: {details}")
        if code in FORBIDDEN:
            raise Failure(f"{method} answered {code}: {details}")
        raise Refused(code, details)

    def answered(self, method: str, request: Any) -> Any:
        """A create with a request ID (idempotent), asked again until the node answers."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return self.rpc(method, request)
            except Refused as refused:
                if refused.code not in TRANSIENT:
                    raise
                if time.monotonic() > deadline:
                    self.bump("unanswered")
                    raise
            time.sleep(0.2)

    def settle(self, method: str, request: Any, busy: tuple[int, ...] = ()) -> Any:
        """What a Get answers once the status is not in `busy`; None once the thing is gone."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                got = self.rpc(method, request)
                if got.status not in busy:
                    return got
            except Refused as refused:
                if refused.code == "NOT_FOUND":
                    return None
                if refused.code not in TRANSIENT:
                    raise
            if time.monotonic() > deadline:
                raise Failure(f"{method} {request}: not settled after {WAIT:.0f}s".strip())
            time.sleep(0.2)

    def settle_server(self, server_id: str) -> Any:
        return self.settle("GetServer", pb.GetServerRequest(server_id=server_id), SERVER_BUSY)

    # -- checks --------------------------------------------------------------------------------
    def clean_since(self, epoch: int) -> bool:
        """No fault since `epoch` was read, and the disk has room."""
        room = os.statvfs(self.node_dir)
        return (
            epoch == self.epoch and not self.faulting and room.f_bavail * room.f_frsize > LOW_SPACE
        )

    def vanished(self, thing_id: str, what: str, refused: Refused | None = None) -> None:
        """A NOT_FOUND: a failure if the model holds the thing and no delete of it is out."""
        if refused is not None and refused.code != "NOT_FOUND":
            return
        with self.lock:
            known = any(thing_id in d for d in (self.servers, self.backups, self.images))
            if known and thing_id not in self.deleting:
                raise Failure(f"{what} {thing_id} is NOT_FOUND, yet it was never deleted")

    def settle_backup(self, backup: BackupModel) -> None:
        request = pb.GetBackupRequest(backup_id=backup.backup_id)
        got = self.settle("GetBackup", request, (CREATING,))
        if got is None:
            self.vanished(backup.backup_id, "backup")
        else:
            self.saw_backup(backup, got)

    def saw_backup(self, backup: BackupModel, got: pb.Backup) -> None:
        status = AVAILABLE if got.status == pb.BACKUP_STATUS_RESTORING else got.status
        if backup.status == AVAILABLE and status != AVAILABLE:
            raise Failure(f"available backup {backup.backup_id} became {got}")
        if status == ERROR and backup.status == CREATING and self.clean_since(backup.epoch):
            raise Failure(f"backup {backup.backup_id} ended in error, no fault: {got.error_reason}")
        backup.status = status

    def verify_server(self, server: ServerModel, when: str) -> None:
        for index, disk in enumerate(server.disks):
            request = pb.ReadDiskRequest(server_id=server.server_id, disk_index=index)
            got = b"".join(m.data for m in self.rpc("ReadDisk", request))
            if problem := disk.check(got):
                raise Failure(f"server {server.server_id} disk {index} {when}: {problem}")
            self.bump("disks_verified")

    def check_filled(self, server: ServerModel, backup: BackupModel, epoch: int, how: str) -> None:
        """A server written from a backup (made from its image, restored): exactly the backup."""
        got = self.settle_server(server.server_id)
        if got is None:
            return self.vanished(server.server_id, "server")
        if got.status == pb.SERVER_STATUS_ERROR:
            server.tainted = f"{how} ended in error"
            if self.clean_since(epoch):
                raise Failure(f"server {got.server_id} {how}: error, no fault: {got.error_reason}")
            return None
        self.verify_server(server, f"({how} backup {backup.backup_id})")
        self.bump("backups_verified")
        return None

    @contextlib.contextmanager
    def holding(self, rng: random.Random) -> Iterator[ServerModel | None]:
        """A random server of the model whose disks are known, its lock held (or None)."""
        with self.lock:
            servers = [s for s in self.servers.values() if not s.tainted]
        server = rng.choice(servers) if servers else None
        if server is not None and not server.lock.acquire(timeout=5):
            server = None
        try:
            alive = server is not None and self.servers.get(server.server_id) is server
            yield server if alive else None
        finally:
            if server is not None:
                server.lock.release()

    def pick(self, rng: random.Random, want: Callable[[BackupModel], bool]) -> BackupModel | None:
        with self.lock:
            found = [b for b in self.backups.values() if b.backup_id not in self.deleting]
        found = [b for b in found if want(b)]
        return rng.choice(found) if found else None

    # -- operations ----------------------------------------------------------------------------
    def op_create_server(self, rng: random.Random) -> None:
        if len(self.servers) >= MAX_SERVERS:
            return
        sizes = [rng.choice(DISK_MIB) * MIB for _ in range(rng.randint(1, 2))]
        disks = [pb.DiskSpec(size_bytes=n) for n in sizes]
        got = self.answered(
            "CreateServer", pb.CreateServerRequest(disks=disks, request_id=_rid(rng))
        )
        with self.lock:
            self.servers[got.server_id] = ServerModel(
                got.server_id, [DiskModel(bytearray(n)) for n in sizes]
            )

    def op_write(self, rng: random.Random) -> None:
        with self.holding(rng) as server:
            if server is None:
                return
            index = rng.randrange(len(server.disks))
            disk, size = server.disks[index], len(server.disks[index].data)
            writes = []
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
                # Mostly small: disks keep holes, which a full filesystem cannot fill.
                most = rng.choice((16 << 10, 16 << 10, 256 << 10, 256 << 10, 4 * MIB))
                length = min(size, rng.randint(1, most))
                offset = rng.randrange(size - length + 1)
                offset -= offset % PAGE if rng.random() < 0.3 else 0
                zeros = rng.random() < 0.1
                writes.append((offset, bytes(length) if zeros else rng.randbytes(length)))
            messages = [
                pb.WriteDiskRequest(server_id=server.server_id, disk_index=index, offset=o, data=d)
                for o, d in writes
            ]
            try:
                got = self.rpc("WriteDisk", messages)
            except Refused:
                for offset, data in writes:
                    disk.write(offset, data, sure=False)
                self.bump("writes_failed")
                raise
            if got.bytes_written != (total := sum(len(d) for _, d in writes)):
                raise Failure(f"WriteDisk acknowledged {got.bytes_written} bytes of {total}")
            for offset, data in writes:
                disk.write(offset, data, sure=True)
            self.bump("writes_acknowledged")
            if rng.random() < 0.15:
                self.verify_server(server, "after a write")

    def op_verify(self, rng: random.Random) -> None:
        with self.holding(rng) as server:
            if server is not None:
                self.verify_server(server, "read back")

    def op_backup(self, rng: random.Random) -> None:
        if len(self.backups) >= MAX_BACKUPS:
            return
        with self.holding(rng) as server:
            if server is None:
                return
            n = len(server.disks)
            some = sorted(rng.sample(range(n), rng.randint(1, n))) if rng.random() < 0.2 else []
            snapshot = {i: server.disks[i].copy() for i in some or range(n)}
            request = pb.CreateBackupRequest(server_id=server.server_id, disk_indexes=some)
            request.request_id = _rid(rng)
            epoch = self.epoch
            got = self.answered("CreateBackup", request)
            backup = BackupModel(got.backup_id, server.server_id, snapshot, epoch)
            with self.lock:
                self.backups[got.backup_id] = backup
            if got.status != CREATING:
                self.saw_backup(backup, got)
        for _ in range(rng.randint(0, 3)):  # writes while it is taken: not in it, not lost
            self.op_write(rng)
        if rng.random() < 0.5:
            self.settle_backup(backup)

    def op_delete(self, rng: random.Random) -> None:
        """Deletes an image, a server or a backup (a replica perhaps with RemoveReplica)."""
        kind = rng.choice(("Image", "Server", "Backup"))
        with self.lock:
            kinds: dict[str, dict[str, Any]] = {
                "Image": self.images, "Server": self.servers, "Backup": self.backups
            }  # fmt: skip
            things = kinds[kind]
            ids = sorted(set(things) - self.deleting)
            if not ids:
                return
            thing_id = rng.choice(ids)
            self.deleting.add(thing_id)
            replica = kind == "Backup" and things[thing_id].replica and rng.random() < 0.5
        method, key = ("RemoveReplica", "replica") if replica else (f"Delete{kind}", kind.lower())
        try:
            try:
                answer = self.rpc(
                    method, getattr(pb, f"{method}Request")(**{f"{key}_id": thing_id})
                )
                if replica and not answer.removed:
                    raise Failure(f"RemoveReplica {thing_id}: the node had nothing to remove")
                done = True
            except Refused as refused:
                if refused.code == "NOT_FOUND":
                    raise Failure(f"{kind} {thing_id} is NOT_FOUND, yet never deleted") from None
                if refused.code not in TRANSIENT:
                    raise
                done = False
            get = getattr(pb, f"Get{kind}Request")(**{f"{kind.lower()}_id": thing_id})
            busy = SERVER_BUSY if kind == "Server" else ()
            if self.settle(f"Get{kind}", get, busy) is None:
                with self.lock:
                    things.pop(thing_id, None)
            elif done:
                raise Failure(f"{kind} {thing_id} is still there after {method} answered")
        finally:
            with self.lock:
                self.deleting.discard(thing_id)

    def op_image(self, rng: random.Random) -> None:
        backup = self.pick(rng, lambda b: b.status == AVAILABLE)
        if backup is None or len(self.images) >= MAX_IMAGES:
            return
        request = pb.CreateImageRequest(backup_id=backup.backup_id, request_id=_rid(rng))
        try:
            image = self.answered("CreateImage", request)
        except Refused as refused:
            self.vanished(backup.backup_id, "backup", refused)
            raise
        with self.lock:
            self.images[image.image_id] = backup.backup_id

    def op_server_from_image(self, rng: random.Random) -> None:
        with self.lock:
            found = sorted(
                (i, self.backups[b]) for i, b in self.images.items() if b in self.backups
            )
        if not found or len(self.servers) >= MAX_SERVERS:
            return
        image_id, backup = rng.choice(found)
        epoch = self.epoch
        request = pb.CreateServerRequest(image_id=image_id, request_id=_rid(rng))
        try:
            got = self.answered("CreateServer", request)
        except Refused as refused:
            self.vanished(image_id, "image", refused)
            raise
        server = ServerModel(got.server_id, [backup.disks[i].copy() for i in sorted(backup.disks)])
        with server.lock:
            with self.lock:
                self.servers[server.server_id] = server
            self.check_filled(server, backup, epoch, f"made from image {image_id} of")

    def op_restore(self, rng: random.Random) -> None:
        backup = self.pick(rng, lambda b: not b.replica and b.status == AVAILABLE)
        server = self.servers.get(backup.server_id) if backup else None
        if backup is None or server is None or not server.lock.acquire(timeout=5):
            return
        try:
            if self.servers.get(server.server_id) is not server or server.tainted:
                return
            epoch = self.epoch
            try:
                self.rpc("RestoreBackup", pb.RestoreBackupRequest(backup_id=backup.backup_id))
            except Refused as refused:
                self.vanished(backup.backup_id, "backup", refused)
                if refused.code not in TRANSIENT:
                    raise
                for i, disk in backup.disks.items():  # it may have started, or not
                    server.disks[i].either(disk)
            else:
                for i, disk in backup.disks.items():
                    server.disks[i] = disk.copy()
            self.check_filled(server, backup, epoch, "restored from")
        finally:
            server.lock.release()

    def op_replicate(self, rng: random.Random) -> None:
        """A replica of a backup in its own region, made the way the coordinator makes one."""
        source = self.pick(rng, lambda b: not b.replica and b.status == AVAILABLE)
        if source is None or sum(b.replica for b in list(self.backups.values())) >= MAX_REPLICAS:
            return
        sid = source.backup_id
        try:
            parts = self.rpc("GetBackupManifest", pb.GetBackupManifestRequest(backup_id=sid))
            shown = self.rpc("GetBackup", pb.GetBackupRequest(backup_id=sid))
        except Refused as refused:
            self.vanished(sid, "backup", refused)
            raise
        job = _rid(rng)
        origin = pb.BackupOrigin(
            replicated=True, source_region_id="cn-east-3", source_backup_id=sid
        )
        origin.way, origin.replication_job_id = common_pb2.REPLICATION_WAY_MANUAL, job
        header = pb.CreateReplicaHeader(project_id=PROJECT, name=f"rep-{job[:12]}", job_id=job)
        header.server_type = shown.server_type
        header.disks.extend(shown.disks)
        header.origin.CopyFrom(origin)
        messages = [pb.CreateReplicaRequest(header=header)]
        messages += [pb.CreateReplicaRequest(manifest=p) for p in parts]
        messages.append(manifest_end(parts))
        rid = self.answered("CreateReplica", messages).backup_id
        model = BackupModel(rid, "", source.disks, self.epoch, replica=True, status=REPLICATING)
        with self.lock:
            self.backups[rid] = model
        if rng.random() < 0.2:
            return  # left unfinished, as a job cut short leaves it
        hashes = list(dict.fromkeys(e.hash for p in parts for e in p.entries))
        found = self.rpc("FindMissingChunks", pb.FindMissingChunksRequest(replica_id=rid))
        if not set(found.missing) <= set(hashes):
            raise Failure(f"replica {rid}: FindMissingChunks names chunks not in its manifest")
        send = hashes if rng.random() < 0.85 else hashes[: len(hashes) // 2]
        chunks: list[pb.ChunkBatch] = []
        for start in range(0, len(send), 4096):
            try:
                chunks += self.rpc("ReadChunks", pb.ReadChunksRequest(hashes=send[start:][:4096]))
            except Refused as refused:
                self.vanished(sid, "backup (a chunk of it)", refused)
                raise
        self.rpc("WriteChunks", chunks, metadata=[("x-csbs-replica-id", rid)])
        try:
            done = self.rpc("CompleteReplica", pb.CompleteReplicaRequest(replica_id=rid))
        except Refused as refused:
            if refused.code == "FAILED_PRECONDITION" and len(send) == len(hashes):
                raise Failure(
                    f"replica {rid} incomplete with every chunk sent: {refused}"
                ) from None
            raise
        self.saw_backup(model, done)

    # -- the run -------------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        with self.lock:
            self.failure = self.failure or what
        self.stop.set()

    def guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Failure as failure:
            self.fail(str(failure))
        except Exception:
            self.fail(f"the soak engine broke:\n{traceback.format_exc()}")

    def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/worker/{index}")
        ops: dict[Callable[[random.Random], None], int] = {
            self.op_write: 30, self.op_verify: 5, self.op_create_server: 4, self.op_backup: 10,
            self.op_delete: 12, self.op_image: 4, self.op_server_from_image: 4,
            self.op_restore: 4, self.op_replicate: 3,
        }  # fmt: skip
        while not self.stop.is_set() and time.monotonic() < self.end:
            with contextlib.suppress(Refused):
                rng.choices(list(ops), list(ops.values()))[0](rng)

    def set_fault(self, on: bool) -> None:
        with self.lock:
            self.epoch += 1
            self.faulting = on

    def restart(self) -> None:
        try:
            self.node.restart()
        except Exception as exc:
            raise Failure(f"the node did not come back: {exc}") from exc

    def faults(self) -> None:
        """Now and then: kill -9 and restart, or a full disk for a while (killed in it, maybe)."""
        rng = random.Random(f"{self.seed}/faults")
        due = time.monotonic() + rng.uniform(2, 6)
        while not self.stop.wait(0.25):
            if (code := self.node.poll()) is not None:
                raise Failure(f"the node exited by itself with code {code}")
            if time.monotonic() < due:
                continue
            self.set_fault(True)
            killed = False
            try:
                if rng.random() < 0.5:
                    self.node.kill()
                    killed = True
                    self.stop.wait(rng.uniform(0, 1.5))
                else:
                    self.fill_disk()
                    hold = rng.uniform(0.5, 5)
                    self.stop.wait(hold / 2)
                    if rng.random() < 0.3:
                        self.node.kill()
                        killed = True
                    self.stop.wait(hold / 2)
            finally:
                self.filler.unlink(missing_ok=True)
                if killed:
                    self.bump("kills")
                    self.restart()
                self.set_fault(False)
            due = time.monotonic() + rng.uniform(2, 8)

    def fill_disk(self) -> None:
        """Writes the filler until the filesystem has no room left (ENOSPC)."""
        self.bump("fills")
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for block in (bytes(MIB), bytes(PAGE)):
                try:
                    while True:
                        os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def run(self) -> None:
        self.end = time.monotonic() + self.seconds
        workers = [threading.Thread(target=self.guarded, args=(functools.partial(self.worker, i),))
                   for i in range(WORKERS)]  # fmt: skip
        faults = threading.Thread(target=self.guarded, args=(self.faults,))
        for thread in [*workers, faults]:
            thread.daemon = True
            thread.start()
        for thread in workers:
            thread.join(self.seconds + 4 * WAIT)
        self.stop.set()
        faults.join(2 * WAIT)
        if any(t.is_alive() for t in [*workers, faults]):
            self.fail(f"a thread of the soak is stuck after {self.seconds + 4 * WAIT:.0f}s")
        if self.failure:
            raise Failure(self.failure)
        try:
            self.finish()
        except Refused as refused:
            raise Failure(f"refused at the end, with no fault any more: {refused}") from None

    def finish(self) -> None:
        """The filler freed, one restart; then every available backup restores exactly, and
        once everything is deleted nothing is left of it."""
        self.epoch += 1
        self.filler.unlink(missing_ok=True)
        self.restart()
        for backup in list(self.backups.values()):
            if backup.status == CREATING:
                self.settle_backup(backup)
        for server in list(self.servers.values()):
            got = self.settle_server(server.server_id)
            if got is None:
                self.vanished(server.server_id, "server")
            elif got.status == pb.SERVER_STATUS_ERROR:
                server.tainted = server.tainted or "in error at the end"
            elif not server.tainted:
                self.verify_server(server, "at the end")
        listed, known = self.listing(), {*self.servers, *self.backups, *self.images}
        if lost := known - listed:
            raise Failure(f"at the end the node lists none of {sorted(lost)}, never deleted")
        if len(extra := listed - known) > self.report.unanswered:
            raise Failure(f"at the end the node lists {sorted(extra)}, never created")
        for backup in list(self.backups.values()):
            if backup.status == AVAILABLE:
                self.verify_at_end(backup)
        for image in self.list("Images"):
            self.rpc("DeleteImage", pb.DeleteImageRequest(image_id=image.image_id))
        for server in self.list("Servers"):
            self.drop_server(server.server_id)
        for backup in self.list("Backups"):
            if backup.status == REPLICATING:
                self.rpc("RemoveReplica", pb.RemoveReplicaRequest(replica_id=backup.backup_id))
            else:
                self.rpc("DeleteBackup", pb.DeleteBackupRequest(backup_id=backup.backup_id))
        if left := self.listing():
            raise Failure(f"after deleting everything the node still lists {sorted(left)}")
        self.cluster.stop()
        self.check_empty()

    def verify_at_end(self, backup: BackupModel) -> None:
        """A server made from an image of the backup holds exactly its point in time; both are
        deleted at once (servers of every backup at the same time would not fit)."""
        image = self.rpc("CreateImage", pb.CreateImageRequest(backup_id=backup.backup_id))
        made = self.rpc("CreateServer", pb.CreateServerRequest(image_id=image.image_id))
        server = ServerModel(made.server_id, [backup.disks[i].copy() for i in sorted(backup.disks)])
        self.check_filled(server, backup, self.epoch, "at the end, made from")
        if server.tainted:
            raise Failure(f"at the end, server {made.server_id} from an image is in error")
        self.drop_server(made.server_id)
        self.rpc("DeleteImage", pb.DeleteImageRequest(image_id=image.image_id))

    def drop_server(self, server_id: str) -> None:
        self.rpc("DeleteServer", pb.DeleteServerRequest(server_id=server_id))
        if self.settle_server(server_id) is not None:
            raise Failure(f"server {server_id} is still there after its deletion")

    def list(self, what: str) -> list[Any]:
        """Every server, backup or image of the project, page after page."""
        items: list[Any] = []
        token = ""
        for _ in range(100):
            request = getattr(pb, f"List{what}Request")(page_size=1000, page_token=token)
            answer = self.rpc(f"List{what}", request)
            items += getattr(answer, what.lower())
            if not (token := answer.next_page_token):
                return items
        raise Failure(f"more than 100 pages of {what}")

    def listing(self) -> set[str]:
        servers = {s.server_id for s in self.list("Servers")}
        return (
            servers
            | {b.backup_id for b in self.list("Backups")}
            | {i.image_id for i in self.list("Images")}
        )

    def check_empty(self) -> None:
        """With the node stopped: no catalog rows, no chunk data in any pack, no disk file."""
        problems = [f"disk file {p.name}" for p in (self.node_dir / "disks").iterdir()]
        for pack in sorted((self.node_dir / "chunks").glob("*.pack")):
            self.report.pack_bytes_left += pack.stat().st_blocks * 512
            if pack.read_bytes()[16:].strip(b"\0"):  # after the pack header: holes or zeros
                problems.append(f"chunk data left in {pack.name}")
        db = sqlite3.connect(f"file:{self.node_dir / 'catalog.db'}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table in [t for t in TABLES if t in tables]:
                if rows := db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]:
                    problems.append(f"{rows} rows in catalog table {table}")
        finally:
            db.close()
        if problems:
            raise Failure("after deleting everything: " + "; ".join(problems))


def _log_excerpt(log: Path, lines: int = 40) -> str:
    """The node log's first unexpected error (an INTERNAL) or else first error, with what
    follows it (a traceback), and its last lines."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no node log: {exc})"
    marks = [i for i, t in enumerate(text) if '"level": "ERROR"' in t]  # JSON lines (issue 14)
    first = next((i for i in marks if "unexpected error" in text[i]), marks[0] if marks else None)
    head = [] if first is None else ["--- first error in it ---", *text[first : first + lines]]
    return "\n".join([*head, "--- its last lines ---", *text[-15:]])


def _keep_evidence(node_dir: Path, to: Path) -> Path:
    """The stopped node's catalog, copied off the tmpfs before it is unmounted, so a failure
    can be read afterwards (`sqlite3 <to>/catalog.db`)."""
    to.mkdir(parents=True, exist_ok=True)
    for path in node_dir.glob("catalog.db*"):
        shutil.copy2(path, to / path.name)
    return to


def run_soak(seed: int, seconds: float, workdir: Path) -> SoakReport:
    """Runs the soak for `seconds` (then the final checks) against a fresh one-region cluster
    whose data is on a tmpfs mounted at `<workdir>/data` (root only; always unmounted), the
    node's log in `<workdir>/node.log`. Raises SoakFailed, naming the seed, on a broken rule."""
    started = time.monotonic()
    data, log = workdir / "data", workdir / "node.log"
    data.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs", str(data)]
    subprocess.run(mount, check=True, capture_output=True)
    soak: _Soak | None = None
    try:
        region = {"id": REGION, "name": "soak", "accepts_replication": True}
        config = write_cluster_config(workdir, regions=[region])
        (data / REGION).mkdir()
        (data / REGION / "node.log").symlink_to(log)  # off the tmpfs: written even when full
        with Cluster(config) as cluster:
            soak = _Soak(seed, seconds, cluster)
            cluster.start()
            soak.run()
    except Failure as failure:
        report = soak.report if soak else SoakReport(seed, seconds)
        report.elapsed = round(time.monotonic() - started, 1)
        evidence = _keep_evidence(data / REGION, workdir / "evidence")
        raise SoakFailed(
            f"seed {seed}: make soak SEED={seed} SECONDS={seconds:g} replays it\n{failure}\n"
            f"node log: {log}\nthe node's catalog as it was: {evidence}\n"
            f"{_log_excerpt(log)}\nreport: {report.json()}",
            report,
        ) from None
    finally:
        if subprocess.run(["umount", str(data)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(data)], capture_output=True)
    assert soak is not None
    soak.report.elapsed = round(time.monotonic() - started, 1)
    return soak.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node_soak", description=__doc__)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1_000_000))
    parser.add_argument("--seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    replay = f"make soak SEED={args.seed} SECONDS={args.seconds:g}"
    print(f"node soak: seed {args.seed}, {args.seconds:g}s ({replay})", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="csbs-soak-"))
    try:
        report = run_soak(args.seed, args.seconds, workdir)
    except SoakFailed as failed:
        print(failed, file=sys.stderr)
        print(failed.report.json(), flush=True)
        return 1
    print(report.json(), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
