"""Taking a backup. It starts under the gates of its disks (in index order): in one
transaction its row, its disks, the chunks written since its base (the newest whole backup of
each disk) and the manifest rows it shares with that base; and, before the gates open, a session
per disk through which a writer preserves a chunk the backup has not read yet. Then the chunks
are read on a few threads, hashed, and put in the chunk store (pinned, see its rules). What it
captured is committed a batch at a time (issue 12: its memory is bounded by the batch, not by
the disk): the batch's chunks made durable, then its manifest rows and the index of what it
stored in one transaction, after which those rows keep the chunks alive and the pins go. The
backup becomes AVAILABLE in the transaction that checks every chunk it names is stored. A
failure ends it in ERROR at once, saying why, drops its manifest and gives back what it wrote."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from csbs import tally
from csbs.errors import ChunkCorrupted, FailedPrecondition
from region_node.catalog import Row, manifests, requests
from region_node.catalog import backups as backup_rows
from region_node.catalog import servers as server_rows
from region_node.models import Disk, ManifestEntry, NewBackup, ServerStatus
from region_node.parts import NodeParts, Progress
from region_node.storage.capacity import CapacityReached
from region_node.storage.chunk_store import chunk_hash
from region_node.storage.disks import STRIPES, BackupSession, DiskState
from region_node.storage.fileio import drop_cache, out_of_space

log = logging.getLogger(__name__)


class Captured(NamedTuple):
    """A chunk a running backup read: its hash, its length, and the bytes it stored anew (0
    when the store had it already)."""

    hash: bytes
    length: int
    stored: int


# What a running backup captured and has not committed yet, by (disk index, chunk index).
Entries = dict[tuple[int, int], Captured]

COMMIT_EVERY = 1024  # chunks captured between two commits of a running backup


class Captures:
    """What a running backup captured: the batch not committed yet, and the bytes it stored
    anew in all. Readers and writers (copy-on-write) add to it from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch: Entries = {}
        self.stored = 0

    def add(self, disk_index: int, chunk_index: int, captured: Captured) -> None:
        with self._lock:
            self._batch[(disk_index, chunk_index)] = captured
            self.stored += captured.stored

    def take(self, at_least: int = 0) -> Entries:
        """The batch, if it holds at least `at_least` chunks (else nothing), and a new one."""
        with self._lock:
            if len(self._batch) < max(at_least, 1):
                return {}
            batch, self._batch = self._batch, {}
            return batch


@dataclass
class DiskPlan:
    """One disk of a running backup."""

    disk_index: int
    disk: DiskState
    todo: list[int]
    session: BackupSession | None = None


# Inside the transaction that inserts a backup or replica of some size (its disks' sizes) into
# a project: raises QuotaExceeded if the project's quotas have no room for it
# (region_node.services.limits).
Admit = Callable[[sqlite3.Connection, str, int, str], None]


class BackupEngine:
    def __init__(self, parts: NodeParts, admit: Admit) -> None:
        self._parts = parts
        self._admit = admit

    def start(self, order: NewBackup, backup_id: str, chosen: list[Disk]) -> str:
        """Starts the backup of `chosen` disks and returns its ID, or the ID of the backup an
        earlier call with the same request ID made."""
        parts = self._parts
        states = [parts.disk(d.disk_id) for d in chosen]
        plans: list[DiskPlan] = []
        for state in states:
            state.gate.acquire()
        try:
            for state in states:
                if state.session is not None:
                    raise FailedPrecondition(
                        f"server {order.server_id} is already being backed up; try again when "
                        "that backup ends"
                    )
                if state.busy:
                    raise FailedPrecondition(f"server {order.server_id}: {state.busy}")
            with parts.catalog.transaction() as conn:
                existing = requests.resource_of(conn, "backup", order.project_id, order.request_id)
                if existing is not None:
                    return existing
                to_read = self._begin(conn, order, backup_id, chosen, states, plans)
                requests.remember(conn, "backup", order.project_id, order.request_id, backup_id)
            progress = parts.progress[backup_id] = Progress(total=to_read)
            # What the backup captured, made before its sessions so that a writer's
            # copy-on-write, possible from the moment the gates open, always has a place to go.
            captures = Captures()
            for plan in plans:
                plan.session = BackupSession(
                    set(plan.todo), self._capture(captures, plan, progress)
                )
                plan.disk.epoch += 1
                plan.disk.marked.clear()
                plan.disk.session = plan.session
        finally:
            for state in reversed(states):
                state.gate.release()
        parts.jobs.submit(self._run, backup_id, plans, captures)
        return backup_id

    def _begin(
        self,
        conn: sqlite3.Connection,
        order: NewBackup,
        backup_id: str,
        disks: list[Disk],
        states: list[DiskState],
        plans: list[DiskPlan],
    ) -> int:
        """Inside the start transaction: the backup row, its disks, the chunks to read, and the
        manifest rows it shares with its base. Returns the bytes it will read."""
        parts = self._parts
        # Checked again in the transaction that starts the backup: a delete that committed
        # since the first look must win.
        server: Row = server_rows.row(conn, order.project_id, order.server_id)
        status = ServerStatus(server["status"])
        if status != ServerStatus.ACTIVE:
            raise FailedPrecondition(
                f"server {order.server_id} is {status.name.lower()}: only an active server can "
                "be backed up"
            )
        # In the transaction that inserts it: two backups racing for a project's last slot
        # are serialized here, and the second is refused.
        self._admit(conn, order.project_id, sum(d.size_bytes for d in disks), "the backup")
        backup_rows.insert(
            conn,
            backup_id,
            order.project_id,
            order.name,
            order.description,
            order.server_id,
            server["server_type"],
            order.policy_id,
            parts.catalog.next_seq(conn, "backup"),
            parts.now(),
        )
        to_read = 0
        for disk, state in zip(disks, states, strict=True):
            backup_rows.insert_disks(conn, backup_id, [disk], state.epoch)
            server_rows.set_epoch(conn, disk.disk_id, state.epoch + 1)
            base = backup_rows.base_of(conn, disk.disk_id, backup_id)
            todo = server_rows.written_since(conn, disk.disk_id, base["epoch"] if base else 0)
            manifests.begin_disk(conn, backup_id, disk.disk_index, base, todo)
            to_read += sum(parts.chunk_length(disk.size_bytes, i) for i in todo)
            plans.append(DiskPlan(disk.disk_index, state, todo))
        backup_rows.set_bytes_to_read(conn, backup_id, to_read)
        return to_read

    def _capture(
        self, captures: Captures, plan: DiskPlan, progress: Progress
    ) -> Callable[[int, memoryview], None]:
        parts = self._parts

        def capture(chunk_index: int, data: memoryview) -> None:
            digest = chunk_hash(data)
            if digest != parts.zero_hash_for(len(data)):
                # Pinned by put until its batch commits or the backup fails (chunk store rules).
                stored = parts.store.put(digest, data)
                captures.add(plan.disk_index, chunk_index, Captured(digest, len(data), stored))
            progress.add(len(data))

        return capture

    def read_chunk(self, plan: DiskPlan, chunk_index: int) -> None:
        session = plan.session
        assert session is not None
        parts = self._parts
        buf = parts.buffer()
        with session.locks[chunk_index % STRIPES]:
            if chunk_index not in session.todo:
                return
            session.todo.discard(chunk_index)
            length = parts.chunk_length(plan.disk.size_bytes, chunk_index)
            view = memoryview(buf)[:length]
            with plan.disk.io() as fd:
                os.preadv(fd, [view], chunk_index * parts.chunk_size)
                drop_cache(fd, chunk_index * parts.chunk_size, length)
        session.capture(chunk_index, view)

    def _run(self, backup_id: str, plans: list[DiskPlan], captures: Captures) -> None:
        parts = self._parts
        progress = parts.progress[backup_id]
        failure: Exception | None = None
        try:
            for plan in plans:

                def read(chunk_index: int, plan: DiskPlan = plan) -> None:
                    self.read_chunk(plan, chunk_index)
                    self._commit_batch(backup_id, captures.take(COMMIT_EVERY))

                parts.parallel(plan.todo, read)
            for plan in plans:
                assert plan.session is not None
                # A chunk a writer took out of `todo` is ours only once its capture has ended.
                plan.session.wait_for_captures()
                if plan.session.failure is not None:
                    raise plan.session.failure
            self._commit(backup_id, captures, progress)
            parts.tally.add(tally.BACKUP_BYTES_READ, progress.done)
            parts.tally.add(tally.BACKUP_BYTES_STORED, captures.stored)
            parts.tally.add(tally.BACKUPS_ENDED, status="available")
        except Exception as exc:
            log.exception("backup %s failed", backup_id)
            failure = exc
        finally:
            for plan in plans:
                with plan.disk.gate:
                    plan.disk.session = None
            # No capture starts any more; those under way end before what they put is given
            # back (a pin left behind would keep its chunk for good).
            for plan in plans:
                if plan.session is not None:
                    plan.session.wait_for_captures()
        if failure is not None:
            parts.tally.add(tally.BACKUPS_ENDED, status="error")
            reason = f"backup failed: {failure}"
            if out_of_space(failure):
                reason = (
                    f"region {parts.region_id} ran out of storage space while taking this backup"
                )
                if isinstance(failure, CapacityReached):
                    reason += f": {failure.why}"
            # Given back before the backup reads as failed: whoever sees ERROR sees it whole.
            self._give_back(captures.take())
            parts.settle(lambda: self._fail(backup_id, reason), f"marking {backup_id} failed")
        parts.progress.pop(backup_id, None)
        parts.notifier.changed(backup_id)

    def _commit_batch(self, backup_id: str, batch: Entries) -> None:
        """Makes a batch's new chunks durable, then in one transaction adds its manifest rows
        and indexes what it stored: from then on the rows keep the chunks alive, and the pins
        go. A batch that cannot commit is given back at once."""
        if not batch:
            return
        parts = self._parts
        digests = [e.hash for e in batch.values()]
        try:
            parts.store.sync()
            with parts.catalog.transaction() as conn:
                if backup_rows.status_of(conn, backup_id) is None:
                    raise FailedPrecondition(f"backup {backup_id} was removed")
                manifests.add_entries(
                    conn,
                    backup_id,
                    (ManifestEntry(d, c, e.hash, e.length) for (d, c), e in batch.items()),
                )
                parts.store.index(conn, digests)
                # A chunk the store had already (not stored anew) can have been found damaged
                # and unindexed between put and now: the backup would name what is not there.
                lacking = parts.store.not_indexed(conn, digests)
                if lacking:
                    raise ChunkCorrupted(
                        f"chunk {lacking[0].hex()} of the backup was found damaged while it ran"
                    )
            parts.store.forget_pending(digests)
        except BaseException:
            self._give_back(batch)
            raise
        parts.store.unpin(digests)

    def _give_back(self, batch: Entries) -> None:
        """Unpins a batch that will not commit, and gives back the space of what it wrote."""
        store = self._parts.store
        store.unpin(e.hash for e in batch.values())
        store.abandon(e.hash for e in batch.values() if e.stored)

    def _commit(self, backup_id: str, captures: Captures, progress: Progress) -> None:
        """Commits the last batch, then AVAILABLE. Every chunk the backup names is stored: each
        batch checked what it named as it committed, and a chunk found damaged since (one it
        read or one of the pages it shares with its base) made the backup ERROR at once
        (engine.damage), which AVAILABLE never overwrites. In time with what changed."""
        parts = self._parts
        self._commit_batch(backup_id, captures.take())
        with parts.catalog.transaction() as conn:
            if not backup_rows.mark_available(
                conn, backup_id, progress.done, captures.stored, parts.now()
            ):
                found = backup_rows.row(conn, None, backup_id)["error_reason"]
                raise ChunkCorrupted(found or f"backup {backup_id} is no longer being taken")

    def _fail(self, backup_id: str, reason: str) -> None:
        parts = self._parts
        with parts.catalog.transaction() as conn:
            freeing = parts.store.freeing(conn)
            manifests.drop(conn, backup_id, freeing.check)
            backup_rows.mark_error(conn, [backup_id], reason, parts.now())
        parts.store.release_freed(freeing)
