"""Backups of a region's servers: take one (or a policy's), look up, list, watch, delete,
restore onto its server, verify. Replicas are backups too (made by a replication job): they
are looked up, listed, verified and deleted here, and made into images, never restored (R2)."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace

from csbs.errors import (
    FailedPrecondition,
    InvalidArgument,
    ReplicaCannotBeRestored,
    ServerNotFound,
)
from csbs.names import validate_description, validate_name, validate_request_id
from csbs.paging import page_size
from region_node.catalog import Row, page, replica_deletions, requests
from region_node.catalog import backups as backup_rows
from region_node.catalog import servers as server_rows
from region_node.engine.backup import BackupEngine
from region_node.engine.fill import FillEngine
from region_node.engine.verify import Verifier
from region_node.models import (
    Backup,
    BackupStatus,
    NewBackup,
    Page,
    Server,
    ServerStatus,
    VerifyProgress,
)
from region_node.parts import NodeParts, makes_room, needs_space, new_id
from region_node.services.region import RegionService
from region_node.services.servers import ServerService
from region_node.storage.disks import DiskState


class BackupService:
    def __init__(
        self,
        parts: NodeParts,
        region: RegionService,
        servers: ServerService,
        engine: BackupEngine,
        fill: FillEngine,
        verifier: Verifier,
    ) -> None:
        self._parts = parts
        self._region = region
        self._servers = servers
        self._engine = engine
        self._fill = fill
        self._verifier = verifier

    @needs_space("the backup")
    def create(self, order: NewBackup) -> Backup:
        parts = self._parts
        project_id = self._region.resolve_project(order.project_id)
        validate_request_id(order.request_id)
        now = parts.clock.now()
        name = (
            validate_name(order.name)
            if order.name
            else f"manualbk_{now:%Y%m%d%H%M%S}_{secrets.token_hex(2)}"
        )
        validate_description(order.description)
        with parts.catalog.read() as conn:
            existing = requests.resource_of(conn, "backup", project_id, order.request_id)
            if existing is None:
                row = server_rows.row(conn, project_id, order.server_id)
                server_disks = server_rows.disks(conn, order.server_id)
        if existing is not None:
            return self.get(project_id, existing)
        status = ServerStatus(row["status"])
        if status != ServerStatus.ACTIVE:
            raise FailedPrecondition(
                f"server {order.server_id} is {status.name.lower()}: only an active server can "
                "be backed up"
            )
        disk_indexes = list(order.disk_indexes) or [d.disk_index for d in server_disks]
        if len(set(disk_indexes)) != len(disk_indexes):
            raise InvalidArgument("disk_indexes: a disk is named twice")
        by_index = {d.disk_index: d for d in server_disks}
        for i in disk_indexes:
            if i not in by_index:
                raise InvalidArgument(f"disk_indexes: server {order.server_id} has no disk {i}")
        chosen = [by_index[i] for i in sorted(disk_indexes)]
        full = parts.store.capacity.full()
        if full is not None:
            # A region at its capacity refuses a backup at once (as a full disk would refuse
            # its catalog rows), rather than starting one that can only fail.
            raise full
        backup_id = self._engine.start(
            replace(order, project_id=project_id, name=name), new_id(), chosen
        )
        return self.get(project_id, backup_id)

    def get(self, project_id: str, backup_id: str) -> Backup:
        project_id = self._region.resolve_project(project_id)
        with self._parts.catalog.read() as conn:
            return self._to_backup(conn, backup_rows.row(conn, project_id, backup_id))

    def get_any(self, backup_id: str) -> Backup:
        """A backup of any project (the coordinator's own calls)."""
        with self._parts.catalog.read() as conn:
            return self._to_backup(conn, backup_rows.row(conn, None, backup_id))

    def _to_backup(self, conn: sqlite3.Connection, row: Row) -> Backup:
        progress = self._parts.progress.get(row["backup_id"])
        running = progress is not None and row["status"] == BackupStatus.CREATING
        return backup_rows.to_backup(conn, row, progress.done if running and progress else None)

    def list(
        self, project_id: str, server_id: str, status: int, policy_id: str, size: int, token: str
    ) -> Page[Backup]:
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        limit = page_size(size)
        if status and status not in BackupStatus.__members__.values():
            raise InvalidArgument(f"status {status} is not a backup status")
        scope = f"backups/{project_id}/{server_id}/{status}/{policy_id}"
        after = parts.tokens.open(scope, token)
        filters = {
            "project_id": project_id,
            "server_id": server_id,
            "status": status,
            "policy_id": policy_id,
        }
        with parts.catalog.read() as conn:
            rows = page(conn, "backups", backup_rows.BACKUP_COLUMNS, filters, after, limit)
            items = [self._to_backup(conn, r) for r in rows[:limit]]
        next_token = parts.tokens.issue(scope, rows[limit - 1]["seq"]) if len(rows) > limit else ""
        return Page(items, next_token)

    def watch(
        self, project_id: str, backup_id: str, active: Callable[[], bool]
    ) -> Iterator[Backup]:
        """The backup now, then as it changes (progress at most twice a second), until it is
        available or in error."""
        notifier = self._parts.notifier
        last: Backup | None = None
        while active():
            version = notifier.version(backup_id)
            backup = self.get(project_id, backup_id)
            if backup != last:
                yield backup
                last = backup
            if backup.status in (BackupStatus.AVAILABLE, BackupStatus.ERROR):
                return
            notifier.wait(backup_id, version, timeout=0.5)

    @makes_room
    def delete(self, project_id: str, backup_id: str) -> int:
        """Deletes a backup (or replica) and frees the chunks nothing keeps alive any more (see
        the chunk store's rules). Returns bytes freed."""
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        with parts.catalog.transaction() as conn:
            status = BackupStatus(backup_rows.row(conn, project_id, backup_id)["status"])
            if backup_id in parts.progress:
                # Made ERROR by a damaged chunk while being taken, and still ending: its reads
                # still hold chunks (pinned), which a deletion now would leave behind.
                raise FailedPrecondition(
                    f"backup {backup_id} failed while being taken and is still stopping; it can "
                    "be deleted in a moment"
                )
            if status in backup_rows.WORKING:
                raise FailedPrecondition(
                    f"backup {backup_id} is {status.name.lower()}; it can be deleted once that ends"
                )
            image = backup_rows.image_of(conn, backup_id)
            if image:
                raise FailedPrecondition(
                    f"backup {backup_id} has image {image}; delete the image first"
                )
            job = backup_rows.hold_of(conn, backup_id)
            if job:
                raise FailedPrecondition(
                    f"backup {backup_id} is being replicated by job {job}; it can be "
                    "deleted once the replication ends"
                )
            replica_deletions.record(conn, backup_id, parts.now())
            freeing = parts.store.freeing(conn)
            backup_rows.delete(conn, backup_id, freeing.check)
        parts.store.release_freed(freeing)
        parts.notifier.changed(backup_id)
        return freeing.bytes

    @needs_space("the restore")
    def restore(self, project_id: str, backup_id: str) -> Server:
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        with parts.catalog.read() as conn:
            backup_rows.row(conn, project_id, backup_id)
            disk_ids = backup_rows.disk_ids(conn, backup_id)
        states: dict[str, DiskState] = {}
        for disk_id in disk_ids:
            with contextlib.suppress(ServerNotFound):  # a disk that is gone: refused below
                states[disk_id] = parts.disk(disk_id)
        # Lock order everywhere: disk gates (by disk index), then the catalog; so that no
        # backup can start between the checks below and the RESTORING they commit.
        for state in states.values():
            state.gate.acquire()
        try:
            server_id = self._begin_restore(project_id, backup_id, states)
        finally:
            for state in reversed(states.values()):
                state.gate.release()
        self._fill.start(server_id, backup_id, zero_first=True)
        parts.notifier.changed(backup_id)
        return self._servers.get(project_id, server_id)

    def _begin_restore(self, project_id: str, backup_id: str, states: dict[str, DiskState]) -> str:
        """Under the gates of the backup's disks: every check of a restore, and the RESTORING
        states of the server and the backup in one transaction. Returns the server's ID."""
        parts = self._parts
        with parts.catalog.transaction() as conn:
            row = backup_rows.row(conn, project_id, backup_id)
            if row["origin_replicated"]:
                raise ReplicaCannotBeRestored(backup_id)
            status = BackupStatus(row["status"])
            if status != BackupStatus.AVAILABLE:
                raise FailedPrecondition(
                    f"backup {backup_id} is {status.name.lower()}; only an available backup can "
                    "be restored"
                )
            server_id = str(row["server_id"])
            try:
                server = server_rows.row(conn, project_id, server_id)
            except ServerNotFound as exc:
                raise FailedPrecondition(
                    f"server {server_id} of backup {backup_id} no longer exists; create a "
                    "server from an image of the backup instead"
                ) from exc
            server_status = ServerStatus(server["status"])
            if server_status != ServerStatus.ACTIVE:
                raise FailedPrecondition(
                    f"server {server_id} is {server_status.name.lower()}; a backup can be "
                    "restored onto an active server"
                )
            server_disks = {d.disk_id for d in server_rows.disks(conn, server_id)}
            for disk_id in backup_rows.disk_ids(conn, backup_id):
                state = states.get(disk_id)
                if disk_id not in server_disks or state is None:
                    raise FailedPrecondition(f"server {server_id} no longer has disk {disk_id}")
                if state.session is not None:
                    raise FailedPrecondition(
                        f"server {server_id} is being backed up; restore when that ends"
                    )
                if state.busy:
                    raise FailedPrecondition(f"server {server_id}: {state.busy}")
            server_rows.set_status(
                conn, server_id, ServerStatus.RESTORING, "", backup_id, parts.now()
            )
            backup_rows.set_status(conn, backup_id, BackupStatus.RESTORING)
        return server_id

    @needs_space("the verification's findings")
    def verify(self, project_id: str, backup_id: str) -> Iterator[VerifyProgress]:
        """VerifyBackup (see engine.verify): progress, then the backup after the check."""
        project_id = self._region.resolve_project(project_id)
        with self._parts.catalog.read() as conn:
            status = BackupStatus(backup_rows.row(conn, project_id, backup_id)["status"])
            if status in (BackupStatus.CREATING, BackupStatus.REPLICATING):
                raise FailedPrecondition(
                    f"backup {backup_id} is {status.name.lower()}; it can be verified once it "
                    "is available"
                )
            chunks = {e.hash: e.length for e in backup_rows.manifest(conn, backup_id)}
        return self._verify(project_id, backup_id, chunks)

    def _verify(
        self, project_id: str, backup_id: str, chunks: dict[bytes, int]
    ) -> Iterator[VerifyProgress]:
        last: VerifyProgress | None = None
        for progress in self._verifier.verify(backup_id, chunks):
            if last is not None:
                yield last
            last = progress
        assert last is not None
        yield replace(last, backup=self.get(project_id, backup_id))
