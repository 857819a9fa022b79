"""Servers and their disks: create (empty, or from an image), look up, list, watch, delete,
and the users' disk writes and reads."""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator

from csbs.errors import FailedPrecondition, InvalidArgument, ServerNotFound
from csbs.names import validate_name, validate_request_id
from csbs.paging import page_size
from region_node.catalog import Row, page, requests
from region_node.catalog import backups as backup_rows
from region_node.catalog import images as image_rows
from region_node.catalog import servers as server_rows
from region_node.engine.disk_io import DiskIO
from region_node.engine.fill import FillEngine
from region_node.models import Disk, NewServer, Page, Server, ServerStatus, ServerType
from region_node.parts import NodeParts, makes_room, needs_space, new_id
from region_node.services.region import RegionService
from region_node.storage.disks import DiskState
from region_node.storage.fileio import out_of_space

MIB = 1 << 20
MAX_DISKS = 24
MAX_DISK_BYTES = 8 << 40  # ext4's largest file is 16 TiB - 4 KiB


def check_disk_size(field: str, size: int) -> None:
    if size <= 0 or size > MAX_DISK_BYTES or size % MIB:
        raise InvalidArgument(f"{field} {size}: must be 1 MiB to 8 TiB, a multiple of 1 MiB")


class ServerService:
    def __init__(
        self, parts: NodeParts, region: RegionService, disk_io: DiskIO, fill: FillEngine
    ) -> None:
        self._parts = parts
        self._region = region
        self._io = disk_io
        self._fill = fill

    @needs_space("the new server's disks")
    def create(self, order: NewServer) -> Server:
        parts = self._parts
        project_id = self._region.resolve_project(order.project_id)
        validate_request_id(order.request_id)
        name = validate_name(order.name) if order.name else f"server-{secrets.token_hex(4)}"
        server_type = order.server_type or ServerType.ECS
        if server_type not in (ServerType.ECS, ServerType.BMS):
            raise InvalidArgument(f"server_type {server_type} is not ECS or BMS")
        backup_id = ""
        disk_sizes = list(order.disk_sizes)
        if order.image_id:
            if disk_sizes:
                raise InvalidArgument(
                    "disks must be empty when image_id is set: the image gives the disks"
                )
            with parts.catalog.read() as conn:
                image = image_rows.to_image(conn, image_rows.row(conn, project_id, order.image_id))
            backup_id = image.backup_id
            disk_sizes = [d.size_bytes for d in image.disks]
        else:
            if not 1 <= len(disk_sizes) <= MAX_DISKS:
                raise InvalidArgument(
                    f"disks: a server has 1 to {MAX_DISKS} disks, {len(disk_sizes)} were given"
                )
            for i, size in enumerate(disk_sizes):
                check_disk_size(f"disks[{i}].size_bytes", size)
        server_id = new_id()
        disks = [Disk(i, new_id(), size) for i, size in enumerate(disk_sizes)]
        states = [parts.new_disk(d.disk_id, d.size_bytes) for d in disks]
        try:
            for state in states:
                state.create_file()
        except OSError as exc:
            for state in states:
                state.remove_file()
            if out_of_space(exc):
                raise
            raise FailedPrecondition(f"the region cannot hold these disks now: {exc}") from exc
        status = ServerStatus.CREATING if order.image_id else ServerStatus.ACTIVE
        try:
            existing = self._insert(project_id, server_id, name, server_type, status, order, disks)
        except BaseException:
            for state in states:  # no row names them: they go now, not at the next start
                state.remove_file()
            raise
        if existing is not None:
            for state in states:
                state.remove_file()
            return self.get(project_id, existing)
        parts.add_disks(states)
        if order.image_id:
            self._fill.start(server_id, backup_id, zero_first=False)
        return self.get(project_id, server_id)

    def _insert(
        self,
        project_id: str,
        server_id: str,
        name: str,
        server_type: int,
        status: ServerStatus,
        order: NewServer,
        disks: list[Disk],
    ) -> str | None:
        """The server's rows, or the ID of the server an earlier call with its request ID
        made."""
        parts = self._parts
        with parts.catalog.transaction() as conn:
            existing = requests.resource_of(conn, "server", project_id, order.request_id)
            if existing is None:
                server_rows.insert(
                    conn,
                    server_id,
                    project_id,
                    name,
                    server_type,
                    status,
                    order.image_id,
                    disks,
                    parts.catalog.next_seq(conn, "server"),
                    parts.now(),
                )
                requests.remember(conn, "server", project_id, order.request_id, server_id)
        return existing

    def get(self, project_id: str, server_id: str) -> Server:
        project_id = self._region.resolve_project(project_id)
        with self._parts.catalog.read() as conn:
            return self._to_server(conn, server_rows.row(conn, project_id, server_id))

    def _to_server(self, conn: sqlite3.Connection, row: Row) -> Server:
        progress = self._parts.progress.get(row["server_id"])
        return server_rows.to_server(
            conn, row, progress.done if progress else 0, progress.total if progress else 0
        )

    def list(self, project_id: str, size: int, token: str) -> Page[Server]:
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        limit = page_size(size)
        scope = f"servers/{project_id}"
        after = parts.tokens.open(scope, token)
        with parts.catalog.read() as conn:
            rows = page(
                conn,
                "servers",
                server_rows.SERVER_COLUMNS,
                {"project_id": project_id},
                after,
                limit,
            )
            items = [self._to_server(conn, r) for r in rows[:limit]]
        next_token = parts.tokens.issue(scope, rows[limit - 1]["seq"]) if len(rows) > limit else ""
        return Page(items, next_token)

    @makes_room
    def delete(self, project_id: str, server_id: str) -> Server:
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        with parts.catalog.read() as conn:
            server_rows.row(conn, project_id, server_id)
            disks = server_rows.disks(conn, server_id)
        states = [parts.disk(d.disk_id) for d in disks]
        # Lock order everywhere: disk gates (by disk index), then the catalog.
        for state in states:
            state.gate.acquire()
        try:
            with parts.catalog.transaction() as conn:
                row = server_rows.row(conn, project_id, server_id)
                status = ServerStatus(row["status"])
                if status not in (ServerStatus.ACTIVE, ServerStatus.ERROR):
                    raise FailedPrecondition(
                        f"server {server_id} is {status.name.lower()}; it can be deleted when "
                        "it is active or in error"
                    )
                if backup_rows.in_progress_of_server(conn, server_id) or any(
                    state.session is not None for state in states
                ):
                    raise FailedPrecondition(
                        f"server {server_id} has a backup in progress; delete it after the "
                        "backup ends"
                    )
                server_rows.set_status(
                    conn, server_id, ServerStatus.DELETING, row["error_reason"], "", parts.now()
                )
                deleting = self._to_server(conn, server_rows.row(conn, project_id, server_id))
            for state in states:
                state.busy = "the server is being deleted"
        finally:
            for state in reversed(states):
                state.gate.release()
        parts.notifier.changed(server_id)
        parts.jobs.submit(self.finish_delete, server_id)
        return deleting

    def finish_delete(self, server_id: str) -> None:
        """The second half of a deletion (also resumed at start): the disk files, then the
        rows. Never dropped."""
        self._parts.settle(lambda: self._delete_now(server_id), f"deleting server {server_id}")

    def _delete_now(self, server_id: str) -> None:
        parts = self._parts
        with parts.catalog.read() as conn:
            disk_ids = server_rows.disk_ids(conn, server_id)
        for disk_id in disk_ids:
            state = parts.forget_disk(disk_id) or parts.new_disk(disk_id, 0, 0)
            with state.gate:
                state.remove_file()
        with parts.catalog.transaction() as conn:
            server_rows.delete(conn, server_id)
        parts.notifier.changed(server_id)

    def watch(
        self, project_id: str, server_id: str, active: Callable[[], bool]
    ) -> Iterator[Server]:
        """The server now, then on every change, until it is active, in error, or gone."""
        notifier = self._parts.notifier
        last: Server | None = None
        while active():
            version = notifier.version(server_id)
            try:
                server = self.get(project_id, server_id)
            except ServerNotFound:
                if last is not None:
                    return
                raise
            if server != last:
                yield server
                last = server
            if server.status in (ServerStatus.ACTIVE, ServerStatus.ERROR):
                return
            notifier.wait(server_id, version, timeout=0.5)

    # -- disk I/O -------------------------------------------------------------------------------
    def _writable_disk(self, project_id: str, server_id: str, disk_index: int) -> DiskState:
        with self._parts.catalog.read() as conn:
            status = ServerStatus(server_rows.row(conn, project_id, server_id)["status"])
            if status != ServerStatus.ACTIVE:
                raise FailedPrecondition(
                    f"server {server_id} is {status.name.lower()}: its disks can be used when "
                    "it is active"
                )
            disk_id = server_rows.disk_id(conn, server_id, disk_index)
        if disk_id is None:
            raise InvalidArgument(f"disk_index {disk_index}: server {server_id} has no such disk")
        return self._parts.disk(disk_id)

    @needs_space("the data written to the disk")
    def write_disk(
        self, project_id: str, server_id: str, disk_index: int, writes: Iterable[tuple[int, bytes]]
    ) -> int:
        """Applies (offset, data) writes to one disk (see engine.disk_io). Returns bytes
        written; the data is flushed to the disk file before returning."""
        project_id = self._region.resolve_project(project_id)
        disk = self._writable_disk(project_id, server_id, disk_index)
        total = 0
        for offset, data in writes:
            self._io.write(disk, offset, data)
            total += len(data)
        if total:
            with disk.io() as fd:
                os.fdatasync(fd)
        return total

    def read_disk(
        self, project_id: str, server_id: str, disk_index: int, offset: int, length: int
    ) -> Iterator[tuple[int, bytes]]:
        project_id = self._region.resolve_project(project_id)
        disk = self._writable_disk(project_id, server_id, disk_index)
        if offset > disk.size_bytes:
            raise InvalidArgument(
                f"offset {offset} is past the end of the disk ({disk.size_bytes} bytes)"
            )
        if length == 0:
            length = disk.size_bytes - offset
        if offset + length > disk.size_bytes:
            raise InvalidArgument(
                f"offset {offset} + length {length} passes the end of the "
                f"disk ({disk.size_bytes} bytes)"
            )
        return self._io.read(disk, offset, length)
