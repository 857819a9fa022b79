"""The region node's domain: servers and their disks, backups, restores and images.

Plain Python: no grpc here. Every refusal is a csbs.errors domain error naming the rule or
field; every catalog change is one transaction; long work (backups, restores, creating a server
from an image) runs in the background and reports progress that watchers follow."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from csbs.clock import Clock, SimulatedClock
from csbs.errors import (
    BackupNotFound,
    ChunkCorrupted,
    FailedPrecondition,
    ImageNotFound,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProjectNotFound,
    ServerNotFound,
    StorageFull,
)
from csbs.names import validate_description, validate_name, validate_request_id
from csbs.notifier import Notifier
from csbs.paging import PageTokens, page_size
from region_node.catalog import Catalog
from region_node.config import NodeConfig
from region_node.models import (
    Backup,
    BackupStatus,
    Disk,
    Image,
    ManifestEntry,
    MissingChunks,
    Origin,
    Page,
    Project,
    RecordStatus,
    RegionInfo,
    ReplicaSpec,
    ReplicationRecord,
    ReplicationWay,
    Server,
    ServerStatus,
    ServerType,
    VerifyProgress,
)
from region_node.storage.chunk_store import HASH_BYTES, ChunkLocation, ChunkStore, chunk_hash
from region_node.storage.disks import STRIPES, BackupSession, DiskState
from region_node.storage.fileio import drop_cache, out_of_space, write_all, zero_range
from region_node.storage.space import SpaceReserve

log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_DISKS = 24
MAX_DISK_BYTES = 8 << 40  # ext4's largest file is 16 TiB - 4 KiB
MAX_WRITE_BYTES = 4 * MIB
READ_PIECE_BYTES = MIB
MANIFEST_PART = 4096  # entries in one manifest message, hashes in one ReadChunks request
COMMIT_EVERY = 32  # chunks received for a replica between two commits
FLUSH_EVERY_BYTES = 64 * MIB
PREFETCH_CHUNKS = 16  # chunks read ahead while writing a backup onto disks
VERIFY_REPORT_CHUNKS = 64  # chunks checked between two progress reports of VerifyBackup

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Row = tuple[Any, ...]  # a catalog row
# What a running backup captured: (disk index, chunk index) -> (hash, length, bytes stored new).
_Entries = dict[tuple[int, int], tuple[bytes, int, int]]
_END = object()


class ChunkSizeMismatch(RuntimeError):
    """The node's data was written with another chunk size than the config gives."""


def needs_space(what: str) -> Callable[[F], F]:
    """A domain call that writes: a full filesystem becomes StorageFull naming the region and
    `what` did not fit (RESOURCE_EXHAUSTED), never an internal error."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: RegionNodeService, *args: Any, **kwargs: Any) -> Any:
            self._reserve.ensure()
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if out_of_space(exc):
                    raise StorageFull(self._config.region_id, what) from exc
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def makes_room(method: F) -> F:
    """A call that frees space (a deletion): on a full filesystem it gives the reserved room
    back and tries once more, so a user can always make room through the API."""

    @functools.wraps(method)
    def wrapper(self: RegionNodeService, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not out_of_space(exc) or not self._reserve.release():
                if out_of_space(exc):
                    raise StorageFull(self._config.region_id, "the deletion's record") from exc
                raise
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class _Progress:
    total: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n


@dataclass
class _DiskPlan:
    """One disk of a running backup."""

    disk_index: int
    disk: DiskState
    todo: list[int]
    session: BackupSession | None = None


class RegionNodeService:
    def __init__(self, config: NodeConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._cs = config.chunk_size
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._catalog = Catalog(config.data_dir / "catalog.db")
        stored_chunk_size = int(self._catalog.setting("chunk_size", str(self._cs)))
        if stored_chunk_size != self._cs:
            self._catalog.close()
            raise ChunkSizeMismatch(
                f"the data in {config.data_dir} was written with chunk_size {stored_chunk_size} "
                f"but cluster.chunk_size is {self._cs}; start with chunk_size = "
                f"{stored_chunk_size}, or with another data_dir"
            )
        self._store = ChunkStore(config.data_dir / "chunks", self._catalog)
        self._disk_dir = config.data_dir / "disks"
        self._disk_dir.mkdir(parents=True, exist_ok=True)
        self._reserve = SpaceReserve(config.data_dir / "reserved-room")
        self._zero_hash = {self._cs: chunk_hash(bytes(self._cs))}
        self._closing = threading.Event()
        self._jobs = ThreadPoolExecutor(max_workers=16, thread_name_prefix="job")
        self._workers = ThreadPoolExecutor(
            max_workers=config.workers * 4, thread_name_prefix="chunk"
        )
        self._local = threading.local()
        self._disks: dict[str, DiskState] = {}
        self._disks_lock = threading.Lock()
        self._progress: dict[str, _Progress] = {}
        self.notifier = Notifier()
        self._tokens = PageTokens(
            self._catalog.setting("page_token_secret", secrets.token_hex(32)).encode()
        )
        self._accepts_replication = (
            self._catalog.setting("accepts_replication", "1" if config.accepts_replication else "0")
            == "1"
        )
        if isinstance(clock, SimulatedClock):
            clock.set(
                datetime.fromisoformat(self._catalog.setting("clock_now", clock.now().isoformat()))
            )
        self._projects = {
            p.project_id: Project(p.project_id, p.name, p.account_id, p.main)
            for p in config.projects
        }
        self._recover()

    # -- settings and start-up ----------------------------------------------------------------
    def _recover(self) -> None:
        """Brings the catalog back to a consistent state after any stop, clean or not."""
        now = _ts(self._clock.now())
        with self._catalog.transaction() as conn:
            interrupted = [
                r[0]
                for r in conn.execute(
                    "SELECT backup_id FROM backups WHERE status = ?", (BackupStatus.CREATING,)
                )
            ]
            for backup_id in interrupted:
                conn.execute("DELETE FROM manifest WHERE backup_id = ?", (backup_id,))
                conn.execute(
                    "UPDATE backups SET status = ?, error_reason = ?, updated_at = ? "
                    "WHERE backup_id = ?",
                    (
                        BackupStatus.ERROR,
                        "the region node stopped while this backup was being taken",
                        now,
                        backup_id,
                    ),
                )
            # A restore resumes below: its backup stays RESTORING (so it cannot be deleted
            # under it) exactly while a server is being restored from it.
            conn.execute(
                "UPDATE backups SET status = CASE WHEN EXISTS (SELECT 1 FROM servers s "
                "WHERE s.restoring_backup_id = backups.backup_id AND s.status = ?) "
                "THEN ? ELSE ? END WHERE status = ?",
                (
                    ServerStatus.RESTORING,
                    BackupStatus.RESTORING,
                    BackupStatus.AVAILABLE,
                    BackupStatus.RESTORING,
                ),
            )
            known = {r[0] for r in conn.execute("SELECT disk_id FROM disks")}
        freed = self._store.collect_garbage()
        orphans = self._remove_orphan_disk_files(known)
        if interrupted or freed or orphans:
            log.info(
                "recovered: %d interrupted backups marked error, %d bytes of garbage freed, "
                "%d disk files no server names removed",
                len(interrupted),
                freed,
                orphans,
            )
        with self._catalog.read() as conn:
            unfinished = conn.execute(
                "SELECT server_id, status, image_id, restoring_backup_id FROM servers "
                "WHERE status IN (?, ?, ?)",
                (ServerStatus.CREATING, ServerStatus.RESTORING, ServerStatus.DELETING),
            ).fetchall()
        for server_id, status, image_id, restoring_backup_id in unfinished:
            if status == ServerStatus.DELETING:
                self._jobs.submit(self._finish_delete_server, server_id)
            elif status == ServerStatus.CREATING:
                backup_id = self._image_backup_id(image_id)
                self._start_fill(server_id, backup_id, zero_first=False)
            else:
                self._start_fill(server_id, restoring_backup_id, zero_first=True)

    def _remove_orphan_disk_files(self, known: set[str]) -> int:
        """Disk files no catalog row names (a node killed while creating a server, a create
        whose transaction failed) are removed at start, before anything can create one."""
        removed = 0
        for entry in self._disk_dir.iterdir():
            if entry.suffix == ".disk" and entry.stem not in known:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def _settle(self, step: Callable[[], None], what: str) -> None:
        """Runs a step that ends work (marks it failed or done, removes what it left): it is
        never dropped. On a full filesystem the reserved room is given back; any other failure
        is retried with backoff until it succeeds or the node stops (the next start then
        finishes the work: `_recover`)."""
        delay = 0.1
        while True:
            try:
                step()
                return
            except Exception as exc:
                if out_of_space(exc) and self._reserve.release():
                    continue
                if self._closing.is_set():
                    log.error("%s left to the next start: %s", what, exc)
                    return
                log.warning("%s failed, trying again in %.1fs: %s", what, delay, exc)
            self._closing.wait(delay)
            delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self._closing.set()
        self._jobs.shutdown(wait=True, cancel_futures=False)
        self._workers.shutdown(wait=True)
        with self._disks_lock:
            for disk in self._disks.values():
                disk.close()
        self._store.close()
        self._catalog.close()

    # -- region -------------------------------------------------------------------------------
    def region_info(self, account_id: str = "") -> RegionInfo:
        """The region as `account_id` sees it: only that account's projects (issue 6); every
        project when the call acts for no account (the coordinator's own calls)."""
        return RegionInfo(
            region_id=self._config.region_id,
            display_name=self._config.display_name,
            accepts_replication=self._accepts_replication,
            projects=tuple(
                p for p in self._projects.values() if not account_id or p.account_id == account_id
            ),
            chunk_size=self._cs,
        )

    @needs_space("the replication capability")
    def set_replication_capability(self, accepts: bool) -> RegionInfo:
        """R5: the region's own word on whether it accepts replication, advertised at once."""
        self._catalog.put_setting("accepts_replication", "1" if accepts else "0")
        self._accepts_replication = accepts
        return self.region_info()

    def authorize_project(self, account_id: str, project_id: str) -> str:
        """The project a call of `account_id` acts in: the named one, which must be one of the
        account's own (issue 6: a token acts only on its own account's projects), or the
        account's main project in this region when none is named. A call that acts for no
        account (the coordinator's own) may name any project."""
        if not project_id:
            if not account_id:
                raise InvalidArgument("project_id: required when a call acts for no account")
            main = next(
                (p for p in self._projects.values() if p.account_id == account_id and p.main),
                None,
            )
            if main is None:
                raise NotFound("main project of account", account_id)
            return main.project_id
        project = self._projects.get(project_id)
        if project is None:
            raise ProjectNotFound(project_id)
        if account_id and project.account_id != account_id:
            raise PermissionDenied(
                f"project {project_id} is not a project of your account: a token acts only on "
                "its own account's projects"
            )
        return project_id

    def resolve_project(self, project_id: str) -> str:
        """The project a domain call acts in: the given one, or, when the node's projects
        belong to one account, that account's main project."""
        if project_id:
            return self.authorize_project("", project_id)
        accounts = {p.account_id for p in self._projects.values()}
        return self.authorize_project(next(iter(accounts)) if len(accounts) == 1 else "", "")

    # -- helpers ------------------------------------------------------------------------------
    def _buffer(self) -> bytearray:
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(self._cs)
        return buf

    def _zero_hash_for(self, length: int) -> bytes:
        digest = self._zero_hash.get(length)
        if digest is None:
            digest = self._zero_hash[length] = chunk_hash(bytes(length))
        return digest

    def _chunk_length(self, size_bytes: int, chunk_index: int) -> int:
        return min(self._cs, size_bytes - chunk_index * self._cs)

    def _chunks_in(self, size_bytes: int) -> int:
        return -(-size_bytes // self._cs)

    def _parallel(self, items: Iterable[T], work: Callable[[T], None], threads: int = 0) -> None:
        """Runs `work` over `items` on `threads` chunk workers (default: the configured number);
        the first error stops the rest."""
        iterator = iter(items)
        lock = threading.Lock()
        errors: list[BaseException] = []

        def run() -> None:
            while not errors:
                with lock:
                    item = next(iterator, _END)
                if item is _END:
                    return
                try:
                    work(item)  # type: ignore[arg-type]
                except BaseException as exc:
                    errors.append(exc)
                    return

        runners = [self._workers.submit(run) for _ in range(threads or self._config.workers)]
        for runner in runners:
            runner.result()
        if errors:
            raise errors[0]

    def _disk_state(self, disk_id: str) -> DiskState:
        # `_disks_lock` is a leaf: the catalog is never taken while holding it.
        with self._disks_lock:
            state = self._disks.get(disk_id)
        if state is not None:
            return state
        with self._catalog.read() as conn:
            row = conn.execute(
                "SELECT size_bytes, epoch FROM disks WHERE disk_id = ?", (disk_id,)
            ).fetchone()
        if row is None:
            raise ServerNotFound(disk_id)
        fresh = DiskState(disk_id, self._disk_dir / f"{disk_id}.disk", row[0], row[1])
        with self._disks_lock:
            return self._disks.setdefault(disk_id, fresh)

    def _check_request(
        self, conn: sqlite3.Connection, kind: str, project_id: str, request_id: str
    ) -> str | None:
        if not request_id:
            return None
        row = conn.execute(
            "SELECT resource_id FROM requests WHERE kind = ? AND project_id = ? AND request_id = ?",
            (kind, project_id, request_id),
        ).fetchone()
        return str(row[0]) if row else None

    def _remember_request(
        self,
        conn: sqlite3.Connection,
        kind: str,
        project_id: str,
        request_id: str,
        resource_id: str,
    ) -> None:
        if request_id:
            conn.execute(
                "INSERT INTO requests(kind, project_id, request_id, resource_id) "
                "VALUES (?, ?, ?, ?)",
                (kind, project_id, request_id, resource_id),
            )

    # -- servers ------------------------------------------------------------------------------
    @needs_space("the new server's disks")
    def create_server(
        self,
        project_id: str,
        name: str,
        server_type: int,
        disk_sizes: list[int],
        image_id: str,
        request_id: str,
    ) -> Server:
        project_id = self.resolve_project(project_id)
        validate_request_id(request_id)
        name = validate_name(name) if name else f"server-{secrets.token_hex(4)}"
        if server_type == 0:
            server_type = ServerType.ECS
        if server_type not in (ServerType.ECS, ServerType.BMS):
            raise InvalidArgument(f"server_type {server_type} is not ECS or BMS")
        backup_id = ""
        if image_id:
            if disk_sizes:
                raise InvalidArgument(
                    "disks must be empty when image_id is set: the image gives the disks"
                )
            image = self.get_image(project_id, image_id)
            backup_id = image.backup_id
            disk_sizes = [d.size_bytes for d in image.disks]
        else:
            if not 1 <= len(disk_sizes) <= MAX_DISKS:
                raise InvalidArgument(
                    f"disks: a server has 1 to {MAX_DISKS} disks, {len(disk_sizes)} were given"
                )
            for i, size in enumerate(disk_sizes):
                if size <= 0 or size > MAX_DISK_BYTES or size % MIB:
                    raise InvalidArgument(
                        f"disks[{i}].size_bytes {size}: must be 1 MiB to 8 TiB, a multiple of 1 MiB"
                    )
        server_id = _new_id()
        disks = [Disk(i, _new_id(), size) for i, size in enumerate(disk_sizes)]
        states = [
            DiskState(d.disk_id, self._disk_dir / f"{d.disk_id}.disk", d.size_bytes, 1)
            for d in disks
        ]
        try:
            for state in states:
                state.create_file()
        except OSError as exc:
            for state in states:
                state.remove_file()
            if out_of_space(exc):
                raise
            raise FailedPrecondition(f"the region cannot hold these disks now: {exc}") from exc
        status = ServerStatus.CREATING if image_id else ServerStatus.ACTIVE
        try:
            existing = self._insert_server(
                project_id, server_id, name, server_type, status, image_id, disks, request_id
            )
        except BaseException:
            for state in states:  # no row names them: they go now, not at the next start
                state.remove_file()
            raise
        if existing is not None:
            for state in states:
                state.remove_file()
            return self.get_server(project_id, existing)
        with self._disks_lock:
            for state in states:
                self._disks[state.disk_id] = state
        if image_id:
            self._start_fill(server_id, backup_id, zero_first=False)
        return self.get_server(project_id, server_id)

    def _insert_server(
        self,
        project_id: str,
        server_id: str,
        name: str,
        server_type: int,
        status: ServerStatus,
        image_id: str,
        disks: list[Disk],
        request_id: str,
    ) -> str | None:
        """The server's rows, or the ID of the server an earlier call with `request_id` made."""
        now = _ts(self._clock.now())
        with self._catalog.transaction() as conn:
            existing = self._check_request(conn, "server", project_id, request_id)
            if existing is None:
                seq = self._catalog.next_seq(conn, "server")
                conn.execute(
                    "INSERT INTO servers(server_id, project_id, name, server_type, status, "
                    "image_id, created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (server_id, project_id, name, server_type, status, image_id, now, now, seq),
                )
                conn.executemany(
                    "INSERT INTO disks(disk_id, server_id, disk_index, size_bytes) "
                    "VALUES (?, ?, ?, ?)",
                    [(d.disk_id, server_id, d.disk_index, d.size_bytes) for d in disks],
                )
                self._remember_request(conn, "server", project_id, request_id, server_id)
        return existing

    def _server_row(self, conn: sqlite3.Connection, project_id: str, server_id: str) -> Row:
        row = conn.execute(
            "SELECT server_id, project_id, name, server_type, status, image_id, error_reason, "
            "created_at, updated_at FROM servers WHERE server_id = ? AND project_id = ?",
            (server_id, project_id),
        ).fetchone()
        if row is None:
            raise ServerNotFound(server_id)
        return tuple(row)

    def _server_disks(self, conn: sqlite3.Connection, server_id: str) -> tuple[Disk, ...]:
        return tuple(
            Disk(r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT disk_index, disk_id, size_bytes FROM disks WHERE server_id = ? "
                "ORDER BY disk_index",
                (server_id,),
            )
        )

    def _to_server(self, conn: sqlite3.Connection, row: Row) -> Server:
        progress = self._progress.get(row[0])
        return Server(
            server_id=row[0],
            project_id=row[1],
            name=row[2],
            server_type=ServerType(row[3]),
            status=ServerStatus(row[4]),
            disks=self._server_disks(conn, row[0]),
            image_id=row[5],
            error_reason=row[6],
            progress_total=progress.total if progress else 0,
            progress_done=progress.done if progress else 0,
            created_at=_dt(row[7]) or self._clock.now(),
            updated_at=_dt(row[8]) or self._clock.now(),
        )

    def get_server(self, project_id: str, server_id: str) -> Server:
        project_id = self.resolve_project(project_id)
        with self._catalog.read() as conn:
            return self._to_server(conn, self._server_row(conn, project_id, server_id))

    def list_servers(self, project_id: str, size: int, token: str) -> Page[Server]:
        project_id = self.resolve_project(project_id)
        limit = page_size(size)
        scope = f"servers/{project_id}"
        after = self._tokens.open(scope, token)
        with self._catalog.read() as conn:
            rows = conn.execute(
                "SELECT server_id, project_id, name, server_type, status, image_id, "
                "error_reason, created_at, updated_at, seq FROM servers "
                "WHERE project_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (project_id, after, limit + 1),
            ).fetchall()
            items = [self._to_server(conn, tuple(r[:9])) for r in rows[:limit]]
        next_token = self._tokens.issue(scope, rows[limit - 1][9]) if len(rows) > limit else ""
        return Page(items, next_token)

    def _set_server_status(
        self, server_id: str, status: ServerStatus, reason: str = "", restoring_backup_id: str = ""
    ) -> None:
        with self._catalog.transaction() as conn:
            conn.execute(
                "UPDATE servers SET status = ?, error_reason = ?, restoring_backup_id = ?, "
                "updated_at = ? WHERE server_id = ?",
                (status, reason, restoring_backup_id, _ts(self._clock.now()), server_id),
            )
        self.notifier.changed(server_id)

    @makes_room
    def delete_server(self, project_id: str, server_id: str) -> Server:
        project_id = self.resolve_project(project_id)
        with self._catalog.read() as conn:
            self._server_row(conn, project_id, server_id)
            disks = self._server_disks(conn, server_id)
        states = [self._disk_state(d.disk_id) for d in disks]
        # Lock order everywhere: disk gates (by disk index), then the catalog.
        for state in states:
            state.gate.acquire()
        try:
            with self._catalog.transaction() as conn:
                row = self._server_row(conn, project_id, server_id)
                status = ServerStatus(row[4])
                if status not in (ServerStatus.ACTIVE, ServerStatus.ERROR):
                    raise FailedPrecondition(
                        f"server {server_id} is {status.name.lower()}; it can be deleted when "
                        "it is active or in error"
                    )
                creating = conn.execute(
                    "SELECT backup_id FROM backups WHERE server_id = ? AND status IN (?, ?)",
                    (server_id, BackupStatus.CREATING, BackupStatus.RESTORING),
                ).fetchone()
                if creating or any(state.session is not None for state in states):
                    raise FailedPrecondition(
                        f"server {server_id} has a backup in progress; delete it after the "
                        "backup ends"
                    )
                conn.execute(
                    "UPDATE servers SET status = ?, updated_at = ? WHERE server_id = ?",
                    (ServerStatus.DELETING, _ts(self._clock.now()), server_id),
                )
                deleting = self._to_server(conn, self._server_row(conn, project_id, server_id))
            for state in states:
                state.busy = "the server is being deleted"
        finally:
            for state in reversed(states):
                state.gate.release()
        self.notifier.changed(server_id)
        self._jobs.submit(self._finish_delete_server, server_id)
        return deleting

    def _finish_delete_server(self, server_id: str) -> None:
        self._settle(lambda: self._delete_server_now(server_id), f"deleting server {server_id}")

    def _delete_server_now(self, server_id: str) -> None:
        with self._catalog.read() as conn:
            disk_ids = [
                r[0]
                for r in conn.execute("SELECT disk_id FROM disks WHERE server_id = ?", (server_id,))
            ]
        for disk_id in disk_ids:
            with self._disks_lock:
                state = self._disks.pop(disk_id, None)
            if state is None:
                state = DiskState(disk_id, self._disk_dir / f"{disk_id}.disk", 0, 0)
            with state.gate:
                state.remove_file()
        with self._catalog.transaction() as conn:
            for disk_id in disk_ids:
                conn.execute("DELETE FROM written_chunks WHERE disk_id = ?", (disk_id,))
            conn.execute("DELETE FROM disks WHERE server_id = ?", (server_id,))
            conn.execute("DELETE FROM servers WHERE server_id = ?", (server_id,))
        self.notifier.changed(server_id)

    def watch_server(
        self, project_id: str, server_id: str, active: Callable[[], bool]
    ) -> Iterator[Server]:
        """The server now, then on every change, until it is active, in error, or gone."""
        seen = -1
        last: Server | None = None
        while active():
            version = self.notifier.version(server_id)
            try:
                server = self.get_server(project_id, server_id)
            except ServerNotFound:
                if last is not None:
                    return
                raise
            if server != last:
                yield server
                last = server
            if server.status in (ServerStatus.ACTIVE, ServerStatus.ERROR):
                return
            seen = self.notifier.wait(server_id, version, timeout=0.5)
            del seen

    # -- disk I/O -----------------------------------------------------------------------------
    def _writable_disk(self, project_id: str, server_id: str, disk_index: int) -> DiskState:
        with self._catalog.read() as conn:
            row = self._server_row(conn, project_id, server_id)
            status = ServerStatus(row[4])
            if status != ServerStatus.ACTIVE:
                raise FailedPrecondition(
                    f"server {server_id} is {status.name.lower()}: its disks can be used when "
                    "it is active"
                )
            disk = conn.execute(
                "SELECT disk_id FROM disks WHERE server_id = ? AND disk_index = ?",
                (server_id, disk_index),
            ).fetchone()
        if disk is None:
            raise InvalidArgument(f"disk_index {disk_index}: server {server_id} has no such disk")
        return self._disk_state(disk[0])

    @needs_space("the data written to the disk")
    def write_disk(
        self, project_id: str, server_id: str, disk_index: int, writes: Iterable[tuple[int, bytes]]
    ) -> int:
        """Applies (offset, data) writes to one disk. Each write first marks its chunks written
        (durably), preserves what a running backup still needs, then writes. Returns bytes
        written; the data is flushed to the disk file before returning."""
        project_id = self.resolve_project(project_id)
        disk = self._writable_disk(project_id, server_id, disk_index)
        total = 0
        for offset, data in writes:
            self._write(disk, offset, data)
            total += len(data)
        if total:
            os.fdatasync(disk.fd)
        return total

    def _write(self, disk: DiskState, offset: int, data: bytes) -> None:
        length = len(data)
        if length > MAX_WRITE_BYTES:
            raise InvalidArgument(f"data: {length} bytes in one message, at most {MAX_WRITE_BYTES}")
        if offset < 0 or offset + length > disk.size_bytes:
            raise InvalidArgument(
                f"offset {offset} + {length} bytes passes the end of the disk "
                f"({disk.size_bytes} bytes)"
            )
        if not length:
            return
        first, last = offset // self._cs, (offset + length - 1) // self._cs
        with disk.gate:
            if disk.busy:
                raise FailedPrecondition(f"disk {disk.disk_id}: {disk.busy}")
            new = [i for i in range(first, last + 1) if i not in disk.marked]
            if new:
                with self._catalog.transaction() as conn:
                    conn.executemany(
                        "INSERT INTO written_chunks(disk_id, chunk_index, epoch) VALUES (?, ?, ?) "
                        "ON CONFLICT(disk_id, chunk_index) DO UPDATE SET epoch = excluded.epoch",
                        [(disk.disk_id, i, disk.epoch) for i in new],
                    )
                disk.marked.update(new)
            session = disk.session
            if session is not None:
                for i in range(first, last + 1):
                    self._preserve(disk, session, i)
            write_all(disk.fd, data, offset)

    def _preserve(self, disk: DiskState, session: BackupSession, chunk_index: int) -> None:
        """Copy-on-write: a chunk the running backup has not read yet is read now, before the
        write that would change it."""
        with session.locks[chunk_index % STRIPES]:
            if chunk_index not in session.todo:
                return
            session.todo.discard(chunk_index)
            length = self._chunk_length(disk.size_bytes, chunk_index)
            buf = bytearray(length)
            os.preadv(disk.fd, [buf], chunk_index * self._cs)
        try:
            session.capture(chunk_index, memoryview(buf))
        except Exception as exc:
            # The write goes on; the backup that lost this chunk ends in error.
            log.warning("backup copy-on-write of chunk %d failed: %s", chunk_index, exc)
            session.failure = exc

    def read_disk(
        self, project_id: str, server_id: str, disk_index: int, offset: int, length: int
    ) -> Iterator[tuple[int, bytes]]:
        project_id = self.resolve_project(project_id)
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
        return self._read_pieces(disk, offset, length)

    def _read_pieces(
        self, disk: DiskState, offset: int, length: int
    ) -> Iterator[tuple[int, bytes]]:
        end = offset + length
        while offset < end:
            n = min(READ_PIECE_BYTES, end - offset)
            yield offset, os.pread(disk.fd, n, offset)
            offset += n

    # -- backups ------------------------------------------------------------------------------
    @needs_space("the backup")
    def create_backup(
        self,
        project_id: str,
        server_id: str,
        name: str,
        description: str,
        disk_indexes: list[int],
        request_id: str,
        policy_id: str = "",
    ) -> Backup:
        project_id = self.resolve_project(project_id)
        validate_request_id(request_id)
        now_dt = self._clock.now()
        name = (
            validate_name(name)
            if name
            else f"manualbk_{now_dt:%Y%m%d%H%M%S}_{secrets.token_hex(2)}"
        )
        validate_description(description)
        with self._catalog.read() as conn:
            existing = self._check_request(conn, "backup", project_id, request_id)
        if existing is not None:
            return self.get_backup(project_id, existing)
        with self._catalog.read() as conn:
            row = self._server_row(conn, project_id, server_id)
            server_disks = self._server_disks(conn, server_id)
        status = ServerStatus(row[4])
        if status != ServerStatus.ACTIVE:
            raise FailedPrecondition(
                f"server {server_id} is {status.name.lower()}: only an active server can be "
                "backed up"
            )
        if not disk_indexes:
            disk_indexes = [d.disk_index for d in server_disks]
        if len(set(disk_indexes)) != len(disk_indexes):
            raise InvalidArgument("disk_indexes: a disk is named twice")
        by_index = {d.disk_index: d for d in server_disks}
        for i in disk_indexes:
            if i not in by_index:
                raise InvalidArgument(f"disk_indexes: server {server_id} has no disk {i}")
        chosen = [by_index[i] for i in sorted(disk_indexes)]
        states = [self._disk_state(d.disk_id) for d in chosen]
        backup_id = _new_id()
        plans: list[_DiskPlan] = []
        # Under the gates of all its disks (in index order), the backup's point in time.
        for state in states:
            state.gate.acquire()
        try:
            for state in states:
                if state.session is not None:
                    raise FailedPrecondition(
                        f"server {server_id} is already being backed up; try again when that "
                        "backup ends"
                    )
                if state.busy:
                    raise FailedPrecondition(f"server {server_id}: {state.busy}")
            with self._catalog.transaction() as conn:
                existing = self._check_request(conn, "backup", project_id, request_id)
                if existing is None:
                    # Checked again in the transaction that starts the backup: a delete that
                    # committed since the first look must win.
                    status = ServerStatus(self._server_row(conn, project_id, server_id)[4])
                    if status != ServerStatus.ACTIVE:
                        raise FailedPrecondition(
                            f"server {server_id} is {status.name.lower()}: only an active "
                            "server can be backed up"
                        )
                    to_read = self._begin_backup(
                        conn,
                        backup_id,
                        project_id,
                        row,
                        name,
                        description,
                        policy_id,
                        chosen,
                        states,
                        plans,
                        now_dt,
                    )
                    self._remember_request(conn, "backup", project_id, request_id, backup_id)
            if existing is not None:
                return self.get_backup(project_id, existing)
            progress = self._progress[backup_id] = _Progress(total=to_read)
            # What the backup captured, made before its sessions so that a writer's
            # copy-on-write, possible from the moment the gates open, always has a place to go.
            entries: _Entries = {}
            for plan in plans:
                plan.session = BackupSession(
                    set(plan.todo), self._capture_for(entries, plan, progress)
                )
                plan.disk.epoch += 1
                plan.disk.marked.clear()
                plan.disk.session = plan.session
        finally:
            for state in reversed(states):
                state.gate.release()
        self._jobs.submit(self._run_backup, backup_id, plans, entries)
        return self.get_backup(project_id, backup_id)

    def _begin_backup(
        self,
        conn: sqlite3.Connection,
        backup_id: str,
        project_id: str,
        server_row: Row,
        name: str,
        description: str,
        policy_id: str,
        disks: list[Disk],
        states: list[DiskState],
        plans: list[_DiskPlan],
        now_dt: datetime,
    ) -> int:
        """Inside the start transaction: the backup row, its disks, the chunks to read, and the
        manifest rows it shares with its base (the newest available backup of each disk)."""
        now = _ts(now_dt)
        seq = self._catalog.next_seq(conn, "backup")
        conn.execute(
            "INSERT INTO backups(backup_id, project_id, name, description, server_id, "
            "server_type, status, policy_id, created_at, updated_at, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                backup_id,
                project_id,
                name,
                description,
                server_row[0],
                server_row[3],
                BackupStatus.CREATING,
                policy_id,
                now,
                now,
                seq,
            ),
        )
        to_read = 0
        for disk, state in zip(disks, states, strict=True):
            conn.execute(
                "INSERT INTO backup_disks(backup_id, disk_index, disk_id, size_bytes, epoch) "
                "VALUES (?, ?, ?, ?, ?)",
                (backup_id, disk.disk_index, disk.disk_id, disk.size_bytes, state.epoch),
            )
            conn.execute(
                "UPDATE disks SET epoch = ? WHERE disk_id = ?", (state.epoch + 1, disk.disk_id)
            )
            base = conn.execute(
                "SELECT bd.backup_id, bd.epoch, bd.disk_index FROM backup_disks bd "
                "JOIN backups b ON b.backup_id = bd.backup_id "
                "WHERE bd.disk_id = ? AND b.status IN (?, ?) AND b.origin_replicated = 0 "
                "AND bd.backup_id != ? ORDER BY bd.epoch DESC LIMIT 1",
                (disk.disk_id, BackupStatus.AVAILABLE, BackupStatus.RESTORING, backup_id),
            ).fetchone()
            base_epoch = base[1] if base else 0
            todo = [
                r[0]
                for r in conn.execute(
                    "SELECT chunk_index FROM written_chunks WHERE disk_id = ? AND epoch > ? "
                    "ORDER BY chunk_index",
                    (disk.disk_id, base_epoch),
                )
            ]
            if base:
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS todo(i INTEGER PRIMARY KEY)")
                conn.execute("DELETE FROM todo")
                conn.executemany("INSERT INTO todo(i) VALUES (?)", [(i,) for i in todo])
                conn.execute(
                    "INSERT INTO manifest(backup_id, disk_index, chunk_index, hash, length) "
                    "SELECT ?, ?, chunk_index, hash, length FROM manifest "
                    "WHERE backup_id = ? AND disk_index = ? "
                    "AND chunk_index NOT IN (SELECT i FROM todo)",
                    (backup_id, disk.disk_index, base[0], base[2]),
                )
            to_read += sum(self._chunk_length(disk.size_bytes, i) for i in todo)
            plans.append(_DiskPlan(disk.disk_index, state, todo))
        conn.execute(
            "UPDATE backups SET bytes_to_read = ? WHERE backup_id = ?", (to_read, backup_id)
        )
        return to_read

    def _capture_for(
        self, entries: _Entries, plan: _DiskPlan, progress: _Progress
    ) -> Callable[[int, memoryview], None]:
        def capture(chunk_index: int, data: memoryview) -> None:
            digest = chunk_hash(data)
            if digest != self._zero_hash_for(len(data)):
                # Pinned by put until the backup commits or fails (chunk store rules).
                stored = self._store.put(digest, data)
                entries[(plan.disk_index, chunk_index)] = (digest, len(data), stored)
            progress.add(len(data))

        return capture

    def _backup_read(self, plan: _DiskPlan, chunk_index: int) -> None:
        session = plan.session
        assert session is not None
        buf = self._buffer()
        with session.locks[chunk_index % STRIPES]:
            if chunk_index not in session.todo:
                return
            session.todo.discard(chunk_index)
            length = self._chunk_length(plan.disk.size_bytes, chunk_index)
            view = memoryview(buf)[:length]
            os.preadv(plan.disk.fd, [view], chunk_index * self._cs)
        drop_cache(plan.disk.fd, chunk_index * self._cs, length)
        session.capture(chunk_index, view)

    def _run_backup(self, backup_id: str, plans: list[_DiskPlan], entries: _Entries) -> None:
        progress = self._progress[backup_id]
        try:
            for plan in plans:
                self._parallel(plan.todo, lambda i, p=plan: self._backup_read(p, i))  # type: ignore[misc]
            for plan in plans:
                if plan.session is not None and plan.session.failure is not None:
                    raise plan.session.failure
            self._commit_backup(backup_id, entries, progress)
        except Exception as exc:
            log.exception("backup %s failed", backup_id)
            reason = (
                f"region {self._config.region_id} ran out of storage space while taking this backup"
                if out_of_space(exc)
                else f"backup failed: {exc}"
            )
            self._settle(
                lambda: self._fail_backup(backup_id, reason), f"marking backup {backup_id} failed"
            )
            written = [e[0] for e in entries.values() if e[2]]
            self._store.unpin(e[0] for e in entries.values())
            self._store.abandon(written)
        else:
            self._store.unpin(e[0] for e in entries.values())
        finally:
            for plan in plans:
                with plan.disk.gate:
                    plan.disk.session = None
            self._progress.pop(backup_id, None)
            self.notifier.changed(backup_id)

    def _commit_backup(self, backup_id: str, entries: _Entries, progress: _Progress) -> None:
        """Makes the backup's new chunks durable, then in one transaction: its manifest, the
        index of the chunks it wrote, a check that every chunk it names is stored, and the
        AVAILABLE status. A backup is available only if it holds every chunk it names."""
        self._store.sync()
        digests = [e[0] for e in entries.values()]
        with self._catalog.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO manifest(backup_id, disk_index, chunk_index, hash, "
                "length) VALUES (?, ?, ?, ?, ?)",
                [(backup_id, d, c, e[0], e[1]) for (d, c), e in entries.items()],
            )
            self._store.index(conn, digests)
            lacking = self._chunks_lacking(conn, backup_id)
            if lacking:
                raise ChunkCorrupted(
                    f"{lacking} chunks of the backup are not in the store (the chunks it shared "
                    "were lost while it ran)"
                )
            now = _ts(self._clock.now())
            conn.execute(
                "UPDATE backups SET status = ?, bytes_read = ?, bytes_stored = ?, "
                "updated_at = ?, completed_at = ? WHERE backup_id = ?",
                (
                    BackupStatus.AVAILABLE,
                    progress.done,
                    sum(e[2] for e in entries.values()),
                    now,
                    now,
                    backup_id,
                ),
            )
        self._store.forget_pending(digests)

    def _chunks_lacking(self, conn: sqlite3.Connection, backup_id: str) -> int:
        """How many chunks a backup's manifest names that the chunk index does not hold."""
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash "
                "WHERE m.backup_id = ? AND c.hash IS NULL",
                (backup_id,),
            ).fetchone()[0]
        )

    def _fail_backup(self, backup_id: str, reason: str) -> None:
        with self._catalog.transaction() as conn:
            hashes = [
                r[0]
                for r in conn.execute("SELECT hash FROM manifest WHERE backup_id = ?", (backup_id,))
            ]
            conn.execute("DELETE FROM manifest WHERE backup_id = ?", (backup_id,))
            conn.execute(
                "UPDATE backups SET status = ?, error_reason = ?, updated_at = ? "
                "WHERE backup_id = ?",
                (BackupStatus.ERROR, reason, _ts(self._clock.now()), backup_id),
            )
            freed = self._store.unindex(conn, self._store.unreferenced(conn, hashes))
        self._store.release(freed)

    def _backup_row(self, conn: sqlite3.Connection, project_id: str | None, backup_id: str) -> Row:
        row = conn.execute(
            "SELECT " + _BACKUP_COLUMNS + " FROM backups WHERE backup_id = ?", (backup_id,)
        ).fetchone()
        if row is None or (project_id is not None and row[1] != project_id):
            raise BackupNotFound(backup_id)
        return tuple(row)

    def _to_backup(self, conn: sqlite3.Connection, row: Row) -> Backup:
        backup_id = row[0]
        disks = tuple(
            Disk(r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT disk_index, disk_id, size_bytes FROM backup_disks WHERE backup_id = ? "
                "ORDER BY disk_index",
                (backup_id,),
            )
        )
        records = tuple(
            ReplicationRecord(
                target_region_id=r[0],
                target_project_id=r[1],
                replica_id=r[2],
                way=ReplicationWay(r[3]),
                policy_id=r[4],
                job_id=r[5],
                status=RecordStatus(r[6]),
                failure_reason=r[7],
                replica_deleted=bool(r[8]),
                updated_at=_dt(r[9]) or self._clock.now(),
            )
            for r in conn.execute(
                "SELECT target_region_id, target_project_id, replica_id, way, policy_id, "
                "job_id, status, failure_reason, replica_deleted, updated_at "
                "FROM replication_records WHERE backup_id = ? ORDER BY updated_at",
                (backup_id,),
            )
        )
        image_ids = tuple(
            r[0]
            for r in conn.execute(
                "SELECT image_id FROM images WHERE backup_id = ? ORDER BY seq", (backup_id,)
            )
        )
        status = BackupStatus(row[6])
        progress = self._progress.get(backup_id)
        bytes_read = progress.done if progress and status == BackupStatus.CREATING else row[9]
        return Backup(
            backup_id=backup_id,
            project_id=row[1],
            name=row[2],
            description=row[3],
            server_id=row[4],
            server_type=ServerType(row[5]),
            disks=disks,
            status=status,
            error_reason=row[7],
            bytes_to_read=row[8],
            bytes_read=bytes_read,
            bytes_stored=row[10],
            policy_id=row[11],
            origin=Origin(
                replicated=bool(row[12]),
                source_region_id=row[13],
                source_project_id=row[14],
                source_backup_id=row[15],
                way=ReplicationWay(row[16]),
                policy_id=row[17],
                job_id=row[18],
            ),
            replications=records,
            image_ids=image_ids,
            created_at=_dt(row[19]) or self._clock.now(),
            updated_at=_dt(row[20]) or self._clock.now(),
            completed_at=_dt(row[21]),
        )

    def get_backup(self, project_id: str, backup_id: str) -> Backup:
        project_id = self.resolve_project(project_id)
        with self._catalog.read() as conn:
            return self._to_backup(conn, self._backup_row(conn, project_id, backup_id))

    def list_backups(
        self, project_id: str, server_id: str, status: int, policy_id: str, size: int, token: str
    ) -> Page[Backup]:
        project_id = self.resolve_project(project_id)
        limit = page_size(size)
        if status and status not in BackupStatus.__members__.values():
            raise InvalidArgument(f"status {status} is not a backup status")
        scope = f"backups/{project_id}/{server_id}/{status}/{policy_id}"
        after = self._tokens.open(scope, token)
        where = ["project_id = ?", "seq > ?"]
        args: list[object] = [project_id, after]
        for column, value in (
            ("server_id", server_id),
            ("status", status),
            ("policy_id", policy_id),
        ):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        with self._catalog.read() as conn:
            rows = conn.execute(
                "SELECT "
                + _BACKUP_COLUMNS
                + ", seq FROM backups WHERE "
                + " AND ".join(where)
                + " ORDER BY seq LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            items = [self._to_backup(conn, tuple(r[:-1])) for r in rows[:limit]]
        next_token = self._tokens.issue(scope, rows[limit - 1][-1]) if len(rows) > limit else ""
        return Page(items, next_token)

    def watch_backup(
        self, project_id: str, backup_id: str, active: Callable[[], bool]
    ) -> Iterator[Backup]:
        """The backup now, then as it changes (progress at most twice a second), until it is
        available or in error."""
        last: Backup | None = None
        while active():
            version = self.notifier.version(backup_id)
            backup = self.get_backup(project_id, backup_id)
            if backup != last:
                yield backup
                last = backup
            if backup.status in (BackupStatus.AVAILABLE, BackupStatus.ERROR):
                return
            self.notifier.wait(backup_id, version, timeout=0.5)

    @makes_room
    def delete_backup(self, project_id: str, backup_id: str) -> int:
        """Deletes a backup and frees the chunks no other backup needs. Returns bytes freed."""
        project_id = self.resolve_project(project_id)
        with self._catalog.transaction() as conn:
            row = self._backup_row(conn, project_id, backup_id)
            status = BackupStatus(row[6])
            if status in (BackupStatus.CREATING, BackupStatus.RESTORING, BackupStatus.REPLICATING):
                raise FailedPrecondition(
                    f"backup {backup_id} is {status.name.lower()}; it can be deleted once that ends"
                )
            image = conn.execute(
                "SELECT image_id FROM images WHERE backup_id = ? LIMIT 1", (backup_id,)
            ).fetchone()
            if image:
                raise FailedPrecondition(
                    f"backup {backup_id} has image {image[0]}; delete the image first"
                )
            hold = conn.execute(
                "SELECT job_id FROM holds WHERE backup_id = ? LIMIT 1", (backup_id,)
            ).fetchone()
            if hold:
                raise FailedPrecondition(
                    f"backup {backup_id} is being replicated by job {hold[0]}; it can be "
                    "deleted once the replication ends"
                )
            hashes = [
                r[0]
                for r in conn.execute("SELECT hash FROM manifest WHERE backup_id = ?", (backup_id,))
            ]
            for table in ("manifest", "backup_disks", "replication_records", "backups"):
                conn.execute(f"DELETE FROM {table} WHERE backup_id = ?", (backup_id,))
            conn.execute("DELETE FROM replica_arrivals WHERE replica_id = ?", (backup_id,))
            conn.execute(
                "DELETE FROM requests WHERE kind = 'backup' AND resource_id = ?", (backup_id,)
            )
            freed = self._store.unindex(conn, self._store.unreferenced(conn, hashes))
        self._store.release(freed)
        self.notifier.changed(backup_id)
        return sum(loc.length for loc in freed)

    # -- restore and filling disks from a backup ----------------------------------------------
    @needs_space("the restore")
    def restore_backup(self, project_id: str, backup_id: str) -> Server:
        project_id = self.resolve_project(project_id)
        with self._catalog.read() as conn:
            self._backup_row(conn, project_id, backup_id)
            disk_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT disk_id FROM backup_disks WHERE backup_id = ? ORDER BY disk_index",
                    (backup_id,),
                )
            ]
        states: dict[str, DiskState] = {}
        for disk_id in disk_ids:
            with contextlib.suppress(ServerNotFound):  # a disk that is gone: refused below
                states[disk_id] = self._disk_state(disk_id)
        # Lock order everywhere: disk gates (by disk index), then the catalog; so that no
        # backup can start between the checks below and the RESTORING they commit.
        for state in states.values():
            state.gate.acquire()
        try:
            server_id = self._begin_restore(project_id, backup_id, states)
        finally:
            for state in reversed(states.values()):
                state.gate.release()
        self._start_fill(server_id, backup_id, zero_first=True)
        self.notifier.changed(backup_id)
        return self.get_server(project_id, server_id)

    def _begin_restore(self, project_id: str, backup_id: str, states: dict[str, DiskState]) -> str:
        """Under the gates of the backup's disks: every check of a restore, and the RESTORING
        states of the server and the backup in one transaction. Returns the server's ID."""
        with self._catalog.transaction() as conn:
            row = self._backup_row(conn, project_id, backup_id)
            if row[12]:
                raise FailedPrecondition(
                    f"R2: backup {backup_id} was replicated in from another region; a replica "
                    "can only be used to create images, not to restore a server"
                )
            if BackupStatus(row[6]) != BackupStatus.AVAILABLE:
                raise FailedPrecondition(
                    f"backup {backup_id} is {BackupStatus(row[6]).name.lower()}; only an "
                    "available backup can be restored"
                )
            server_id = row[4]
            try:
                server = self._server_row(conn, project_id, server_id)
            except ServerNotFound as exc:
                raise FailedPrecondition(
                    f"server {server_id} of backup {backup_id} no longer exists; create a "
                    "server from an image of the backup instead"
                ) from exc
            if ServerStatus(server[4]) != ServerStatus.ACTIVE:
                raise FailedPrecondition(
                    f"server {server_id} is {ServerStatus(server[4]).name.lower()}; a backup "
                    "can be restored onto an active server"
                )
            server_disks = {d.disk_id for d in self._server_disks(conn, server_id)}
            for disk_id in conn.execute(
                "SELECT disk_id FROM backup_disks WHERE backup_id = ?", (backup_id,)
            ):
                state = states.get(disk_id[0])
                if disk_id[0] not in server_disks or state is None:
                    raise FailedPrecondition(f"server {server_id} no longer has disk {disk_id[0]}")
                if state.session is not None:
                    raise FailedPrecondition(
                        f"server {server_id} is being backed up; restore when that ends"
                    )
                if state.busy:
                    raise FailedPrecondition(f"server {server_id}: {state.busy}")
            conn.execute(
                "UPDATE servers SET status = ?, restoring_backup_id = ?, updated_at = ? "
                "WHERE server_id = ?",
                (ServerStatus.RESTORING, backup_id, _ts(self._clock.now()), server_id),
            )
            conn.execute(
                "UPDATE backups SET status = ? WHERE backup_id = ?",
                (BackupStatus.RESTORING, backup_id),
            )
        return str(server_id)

    def _start_fill(self, server_id: str, backup_id: str, zero_first: bool) -> None:
        progress = self._progress[server_id] = _Progress()
        with self._catalog.read() as conn:
            total = conn.execute(
                "SELECT COALESCE(SUM(length), 0) FROM manifest WHERE backup_id = ?", (backup_id,)
            ).fetchone()[0]
        progress.total = int(total)
        self._jobs.submit(self._fill, server_id, backup_id, zero_first, progress)

    def _fill(self, server_id: str, backup_id: str, zero_first: bool, progress: _Progress) -> None:
        """Writes a backup's disks onto a server's disks: a restore (zero_first: every chunk
        the backup does not hold becomes zeros) or a new server from an image."""
        status, reason = ServerStatus.ERROR, "the work on the server was interrupted"
        try:
            with self._catalog.read() as conn:
                pairs = conn.execute(
                    "SELECT bd.disk_index, d.disk_id FROM backup_disks bd JOIN disks d "
                    "ON d.server_id = ? AND d.disk_index = bd.disk_index "
                    "WHERE bd.backup_id = ? ORDER BY bd.disk_index",
                    (server_id, backup_id),
                ).fetchall()
            for disk_index, disk_id in pairs:
                self._fill_disk(
                    backup_id, disk_index, self._disk_state(disk_id), zero_first, progress
                )
            status, reason = ServerStatus.ACTIVE, ""
        except Exception as exc:
            log.exception("writing backup %s onto server %s failed", backup_id, server_id)
            status, reason = ServerStatus.ERROR, f"{exc}"
            if out_of_space(exc):
                reason = (
                    f"region {self._config.region_id} ran out of storage space while writing "
                    "the server's disks"
                )
            elif isinstance(exc, ChunkCorrupted) and exc.digest:
                self._chunk_damaged(exc.digest, exc.message)
        finally:
            # The server's end state first, then the backup's: the backup stays RESTORING (and
            # so undeletable) until no work on its behalf is left.
            self._settle(
                lambda: self._set_server_status(server_id, status, reason),
                f"ending the work on server {server_id}",
            )
            if zero_first:
                self._settle(
                    lambda: self._end_restoring(backup_id), f"ending the restore of {backup_id}"
                )
                self.notifier.changed(backup_id)
            self._progress.pop(server_id, None)
            self.notifier.changed(server_id)

    def _first_missing_chunk(self, backup_id: str) -> bytes:
        with self._catalog.read() as conn:
            row = conn.execute(
                "SELECT m.hash FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash "
                "WHERE m.backup_id = ? AND c.hash IS NULL LIMIT 1",
                (backup_id,),
            ).fetchone()
        return bytes(row[0]) if row else b""

    def _chunk_damaged(self, digest: bytes, found: str) -> None:
        """A chunk found bad or missing by any read: every backup that names it and said it was
        whole becomes ERROR, saying why (so that GetBackup never shows AVAILABLE for a backup
        that cannot be restored), and the chunk leaves the index, so that the next backup of
        the same data stores it anew instead of naming the bad copy."""

        names: list[str] = []
        locations: list[ChunkLocation] = []

        def mark() -> None:
            with self._catalog.transaction() as conn:
                names[:] = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT backup_id FROM manifest WHERE hash = ?", (digest,)
                    )
                ]
                conn.executemany(
                    "UPDATE backups SET status = ?, error_reason = ?, updated_at = ? "
                    "WHERE backup_id = ? AND status IN (?, ?)",
                    [
                        (
                            BackupStatus.ERROR,
                            f"chunk {digest.hex()} of this backup is damaged or missing ({found})",
                            _ts(self._clock.now()),
                            backup_id,
                            BackupStatus.AVAILABLE,
                            BackupStatus.RESTORING,
                        )
                        for backup_id in names
                    ],
                )
                locations[:] = self._store.unindex(conn, [digest])

        self._settle(mark, f"marking chunk {digest.hex()} damaged")
        self._store.release(locations)
        for backup_id in names:
            self.notifier.changed(backup_id)

    def _end_restoring(self, backup_id: str) -> None:
        with self._catalog.transaction() as conn:
            conn.execute(
                "UPDATE backups SET status = ? WHERE backup_id = ? AND status = ?",
                (BackupStatus.AVAILABLE, backup_id, BackupStatus.RESTORING),
            )

    def _fill_disk(
        self,
        backup_id: str,
        disk_index: int,
        disk: DiskState,
        zero_first: bool,
        progress: _Progress,
    ) -> None:
        with self._catalog.read() as conn:
            entries = [
                (r[0], r[1], ChunkLocation(r[2], r[3], r[4]))
                for r in conn.execute(
                    "SELECT m.chunk_index, m.hash, c.pack_id, c.offset, c.length "
                    "FROM manifest m JOIN chunks c ON c.hash = m.hash "
                    "WHERE m.backup_id = ? AND m.disk_index = ? ORDER BY m.chunk_index",
                    (backup_id, disk_index),
                )
            ]
            expected = conn.execute(
                "SELECT COUNT(*) FROM manifest WHERE backup_id = ? AND disk_index = ?",
                (backup_id, disk_index),
            ).fetchone()[0]
            written = [
                r[0]
                for r in conn.execute(
                    "SELECT chunk_index FROM written_chunks WHERE disk_id = ?", (disk.disk_id,)
                )
            ]
        if len(entries) != expected:
            raise ChunkCorrupted(
                f"backup {backup_id}: {expected - len(entries)} chunks of disk {disk_index} "
                "are missing from the store",
                self._first_missing_chunk(backup_id),
            )
        with disk.gate:
            disk.busy = "the server's disks are being written from a backup"
            # Marked before they change, so that the next backup reads them again.
            changing = sorted({e[0] for e in entries} | set(written))
            with self._catalog.transaction() as conn:
                conn.executemany(
                    "INSERT INTO written_chunks(disk_id, chunk_index, epoch) VALUES (?, ?, ?) "
                    "ON CONFLICT(disk_id, chunk_index) DO UPDATE SET epoch = excluded.epoch",
                    [(disk.disk_id, i, disk.epoch) for i in changing],
                )
        try:
            fd = disk.fd
            if zero_first:
                held = {e[0] for e in entries}
                zeros = bytes(self._cs)
                for i in range(self._chunks_in(disk.size_bytes)):
                    if i not in held:
                        length = self._chunk_length(disk.size_bytes, i)
                        zero_range(fd, i * self._cs, length, zeros)
            lock = threading.Lock()
            state = {"flushed": 0, "prefetched": 0}

            def write(position: int) -> None:
                chunk_index, digest, loc = entries[position]
                with lock:
                    # Keep the kernel reading a window ahead of the writers.
                    ahead = min(len(entries), position + PREFETCH_CHUNKS)
                    start = max(state["prefetched"], position)
                    state["prefetched"] = max(state["prefetched"], ahead)
                self._store.prefetch(e[2] for e in entries[start:ahead])
                view = self._store.read_at(digest, loc, self._buffer())
                write_all(fd, view, chunk_index * self._cs)
                self._store.forget_cached(loc)
                progress.add(len(view))
                with lock:
                    state["flushed"] += len(view)
                    due = state["flushed"] >= FLUSH_EVERY_BYTES
                    if due:
                        state["flushed"] = 0
                if due:
                    os.fdatasync(fd)
                    drop_cache(fd)

            self._parallel(range(len(entries)), write, threads=self._config.workers * 2)
            os.fdatasync(fd)
            drop_cache(fd)
            self._store.drop_read_cache()
        finally:
            with disk.gate:
                disk.busy = ""

    # -- verifying ----------------------------------------------------------------------------
    @needs_space("the verification's findings")
    def verify_backup(self, project_id: str, backup_id: str) -> Iterator[VerifyProgress]:
        """Reads every distinct chunk a backup names and checks it against its hash, reporting
        progress every VERIFY_REPORT_CHUNKS chunks. The chunks are pinned meanwhile, so that a
        deletion running beside it cannot make a chunk look missing. A bad chunk marks every
        backup naming it (`_chunk_damaged`); this one's reason then says how many were bad."""
        project_id = self.resolve_project(project_id)
        with self._catalog.read() as conn:
            row = self._backup_row(conn, project_id, backup_id)
            status = BackupStatus(row[6])
            if status in (BackupStatus.CREATING, BackupStatus.REPLICATING):
                raise FailedPrecondition(
                    f"backup {backup_id} is {status.name.lower()}; it can be verified once it "
                    "is available"
                )
            chunks = dict(
                conn.execute(
                    "SELECT hash, length FROM manifest WHERE backup_id = ? "
                    "ORDER BY disk_index, chunk_index",
                    (backup_id,),
                ).fetchall()
            )
        return self._verify(project_id, backup_id, chunks)

    def _verify(
        self, project_id: str, backup_id: str, chunks: dict[bytes, int]
    ) -> Iterator[VerifyProgress]:
        total_bytes = sum(chunks.values())
        checked = checked_bytes = 0
        bad: list[bytes] = []
        buf = bytearray(self._cs)
        self._store.pin(chunks)
        try:
            for digest, length in chunks.items():
                try:
                    self._store.read(digest, buf)
                except ChunkCorrupted as exc:
                    bad.append(digest)
                    self._chunk_damaged(digest, f"found by VerifyBackup: {exc.message}")
                checked += 1
                checked_bytes += length
                if checked % VERIFY_REPORT_CHUNKS == 0:
                    yield VerifyProgress(len(chunks), checked, total_bytes, checked_bytes, len(bad))
        finally:
            self._store.unpin(chunks)
            self._store.drop_read_cache()  # a check streams; it keeps nothing cached
        if bad:
            reason = (
                f"VerifyBackup: {len(bad)} of {len(chunks)} chunks are damaged or missing "
                f"(first: {bad[0].hex()}); this backup cannot be restored"
            )
            self._settle(
                lambda: self._mark_unrestorable(backup_id, reason), f"marking {backup_id} bad"
            )
        yield VerifyProgress(
            len(chunks),
            checked,
            total_bytes,
            checked_bytes,
            len(bad),
            self.get_backup(project_id, backup_id),
        )

    def _mark_unrestorable(self, backup_id: str, reason: str) -> None:
        with self._catalog.transaction() as conn:
            conn.execute(
                "UPDATE backups SET status = ?, error_reason = ?, updated_at = ? "
                "WHERE backup_id = ? AND status != ?",
                (
                    BackupStatus.ERROR,
                    reason,
                    _ts(self._clock.now()),
                    backup_id,
                    BackupStatus.CREATING,
                ),
            )
        self.notifier.changed(backup_id)

    # -- images -------------------------------------------------------------------------------
    @needs_space("the image's record")
    def create_image(
        self, project_id: str, backup_id: str, name: str, description: str, request_id: str
    ) -> Image:
        project_id = self.resolve_project(project_id)
        validate_request_id(request_id)
        name = validate_name(name) if name else f"image-{secrets.token_hex(4)}"
        validate_description(description)
        image_id = _new_id()
        with self._catalog.transaction() as conn:
            existing = self._check_request(conn, "image", project_id, request_id)
            if existing is None:
                row = self._backup_row(conn, project_id, backup_id)
                status = BackupStatus(row[6])
                if status not in (BackupStatus.AVAILABLE, BackupStatus.RESTORING):
                    raise FailedPrecondition(
                        f"P4: backup {backup_id} is {status.name.lower()}; an image can be "
                        "created only from an available backup"
                    )
                conn.execute(
                    "INSERT INTO images(image_id, project_id, name, description, backup_id, "
                    "created_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_id,
                        project_id,
                        name,
                        description,
                        backup_id,
                        _ts(self._clock.now()),
                        self._catalog.next_seq(conn, "image"),
                    ),
                )
                self._remember_request(conn, "image", project_id, request_id, image_id)
        self.notifier.changed(backup_id)
        return self.get_image(project_id, existing or image_id)

    def _to_image(self, conn: sqlite3.Connection, row: Row) -> Image:
        disks = tuple(
            Disk(r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT disk_index, disk_id, size_bytes FROM backup_disks WHERE backup_id = ? "
                "ORDER BY disk_index",
                (row[4],),
            )
        )
        return Image(
            row[0], row[1], row[2], row[3], row[4], disks, _dt(row[5]) or self._clock.now()
        )

    def get_image(self, project_id: str, image_id: str) -> Image:
        project_id = self.resolve_project(project_id)
        with self._catalog.read() as conn:
            row = conn.execute(
                "SELECT image_id, project_id, name, description, backup_id, created_at "
                "FROM images WHERE image_id = ? AND project_id = ?",
                (image_id, project_id),
            ).fetchone()
            if row is None:
                raise ImageNotFound(image_id)
            return self._to_image(conn, tuple(row))

    def list_images(self, project_id: str, size: int, token: str) -> Page[Image]:
        project_id = self.resolve_project(project_id)
        limit = page_size(size)
        scope = f"images/{project_id}"
        after = self._tokens.open(scope, token)
        with self._catalog.read() as conn:
            rows = conn.execute(
                "SELECT image_id, project_id, name, description, backup_id, created_at, seq "
                "FROM images WHERE project_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (project_id, after, limit + 1),
            ).fetchall()
            items = [self._to_image(conn, tuple(r[:6])) for r in rows[:limit]]
        next_token = self._tokens.issue(scope, rows[limit - 1][6]) if len(rows) > limit else ""
        return Page(items, next_token)

    @makes_room
    def delete_image(self, project_id: str, image_id: str) -> None:
        project_id = self.resolve_project(project_id)
        with self._catalog.transaction() as conn:
            image = conn.execute(
                "SELECT backup_id FROM images WHERE image_id = ? AND project_id = ?",
                (image_id, project_id),
            ).fetchone()
            if image is None:
                raise ImageNotFound(image_id)
            creating = conn.execute(
                "SELECT server_id FROM servers WHERE image_id = ? AND status = ?",
                (image_id, ServerStatus.CREATING),
            ).fetchone()
            if creating:
                raise FailedPrecondition(
                    f"image {image_id} is being used to create server {creating[0]}; delete it "
                    "once the server is active"
                )
            conn.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
            conn.execute(
                "DELETE FROM requests WHERE kind = 'image' AND resource_id = ?", (image_id,)
            )
        self.notifier.changed(image[0])

    def _image_backup_id(self, image_id: str) -> str:
        with self._catalog.read() as conn:
            row = conn.execute(
                "SELECT backup_id FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
        return str(row[0]) if row else ""

    # -- replication (internal: only the coordinator calls these) -----------------------------
    def manifest(self, backup_id: str) -> Iterator[list[ManifestEntry]]:
        """A backup's non-zero chunks, in order, in parts of at most MANIFEST_PART entries."""
        with self._catalog.read() as conn:
            self._backup_row(conn, None, backup_id)
            rows = conn.execute(
                "SELECT disk_index, chunk_index, hash, length FROM manifest WHERE backup_id = ? "
                "ORDER BY disk_index, chunk_index",
                (backup_id,),
            ).fetchall()
        for start in range(0, len(rows), MANIFEST_PART):
            yield [ManifestEntry(*r) for r in rows[start : start + MANIFEST_PART]]

    def read_chunks(self, hashes: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """The named chunks, verified; read ahead a window at a time and dropped from the page
        cache once sent (a replication streams them, it does not need them again)."""
        if len(hashes) > MANIFEST_PART:
            raise InvalidArgument(f"hashes: {len(hashes)} given, at most {MANIFEST_PART}")
        locations = []
        for digest in hashes:
            self._check_hash(digest)
            loc = self._store.locate(digest)
            if loc is None:
                raise NotFound("chunk", digest.hex())
            locations.append(loc)
        self._store.prefetch(locations[:PREFETCH_CHUNKS])
        buf = bytearray(self._cs)
        for i, (digest, loc) in enumerate(zip(hashes, locations, strict=True)):
            if i + PREFETCH_CHUNKS < len(locations):
                self._store.prefetch([locations[i + PREFETCH_CHUNKS]])
            try:
                data = bytes(self._store.read_at(digest, loc, buf))
            except ChunkCorrupted as exc:
                self._chunk_damaged(digest, f"found by a replication reading it: {exc.message}")
                raise
            self._store.forget_cached(loc)
            yield digest, data

    def _check_hash(self, digest: bytes) -> None:
        if len(digest) != HASH_BYTES:
            raise InvalidArgument(f"hash: {len(digest)} bytes, a chunk hash has {HASH_BYTES}")

    @needs_space("the replica")
    def create_replica(self, spec: ReplicaSpec, entries: Iterable[ManifestEntry]) -> Backup:
        """A replica in status REPLICATING with its whole manifest; idempotent by job ID."""
        with self._catalog.read() as conn:
            existing = conn.execute(
                "SELECT backup_id, project_id FROM backups WHERE origin_job_id = ?",
                (spec.job_id,),
            ).fetchone()
        if existing:
            with self._catalog.read() as conn:
                return self._to_backup(conn, self._backup_row(conn, None, existing[0]))
        if not self._accepts_replication:
            raise FailedPrecondition(
                f"R5: region {self._config.region_id} does not accept replication"
            )
        if not spec.job_id:
            raise InvalidArgument("job_id: a replica is created for a replication job")
        project_id = self.resolve_project(spec.project_id)
        validate_name(spec.name)
        validate_description(spec.description)
        if not spec.origin.replicated or not spec.origin.source_backup_id:
            raise InvalidArgument("origin: a replica records its source region and backup")
        if not 1 <= len(spec.disks) <= MAX_DISKS:
            raise InvalidArgument(f"disks: 1 to {MAX_DISKS}")
        sizes: dict[int, int] = {}
        for disk in spec.disks:
            if disk.size_bytes <= 0 or disk.size_bytes > MAX_DISK_BYTES or disk.size_bytes % MIB:
                raise InvalidArgument(f"disks[{disk.disk_index}].size_bytes {disk.size_bytes}")
            if disk.disk_index in sizes or disk.disk_index >= MAX_DISKS:
                raise InvalidArgument(f"disks: disk_index {disk.disk_index} is invalid or twice")
            sizes[disk.disk_index] = disk.size_bytes
        rows = []
        seen: set[tuple[int, int]] = set()
        for entry in entries:
            size = sizes.get(entry.disk_index)
            if size is None:
                raise InvalidArgument(f"manifest: disk_index {entry.disk_index} is not a disk")
            if not 0 <= entry.chunk_index < self._chunks_in(size):
                raise InvalidArgument(
                    f"manifest: chunk_index {entry.chunk_index} is past the end of its disk"
                )
            if entry.length != self._chunk_length(size, entry.chunk_index):
                raise InvalidArgument(
                    f"manifest: chunk {entry.chunk_index} has length "
                    f"{entry.length}, expected its chunk's size"
                )
            self._check_hash(entry.hash)
            key = (entry.disk_index, entry.chunk_index)
            if key in seen:
                raise InvalidArgument(f"manifest: chunk {key} appears twice")
            seen.add(key)
            rows.append((entry.disk_index, entry.chunk_index, entry.hash, entry.length))
        now = _ts(self._clock.now())
        backup_id = _new_id()
        origin = spec.origin
        with self._catalog.transaction() as conn:
            again = conn.execute(
                "SELECT backup_id FROM backups WHERE origin_job_id = ?", (spec.job_id,)
            ).fetchone()
            if again is None:
                conn.execute(
                    "INSERT INTO backups(backup_id, project_id, name, description, server_id, "
                    "server_type, status, bytes_to_read, origin_replicated, origin_region_id, "
                    "origin_project_id, origin_backup_id, origin_way, origin_policy_id, "
                    "origin_job_id, created_at, updated_at, seq) "
                    "VALUES (?, ?, ?, ?, '', ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        backup_id,
                        project_id,
                        spec.name,
                        spec.description,
                        int(spec.server_type),
                        BackupStatus.REPLICATING,
                        sum(r[3] for r in rows),
                        origin.source_region_id,
                        origin.source_project_id,
                        origin.source_backup_id,
                        int(origin.way),
                        origin.policy_id,
                        spec.job_id,
                        now,
                        now,
                        self._catalog.next_seq(conn, "backup"),
                    ),
                )
                conn.executemany(
                    "INSERT INTO backup_disks(backup_id, disk_index, disk_id, size_bytes, epoch) "
                    "VALUES (?, ?, ?, ?, 0)",
                    [(backup_id, d.disk_index, d.disk_id, d.size_bytes) for d in spec.disks],
                )
                conn.executemany(
                    "INSERT INTO manifest(backup_id, disk_index, chunk_index, hash, length) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(backup_id, *r) for r in rows],
                )
            else:
                backup_id = again[0]
        self.notifier.changed(backup_id)
        with self._catalog.read() as conn:
            return self._to_backup(conn, self._backup_row(conn, None, backup_id))

    def _replica_row(self, conn: sqlite3.Connection, replica_id: str) -> Row:
        row = self._backup_row(conn, None, replica_id)
        if not row[12]:
            raise FailedPrecondition(f"backup {replica_id} is not a replica")
        return row

    def find_missing_chunks(self, replica_id: str) -> MissingChunks:
        """The chunks of a replica's manifest the coordinator must send, and those it need not.

        Issue 6: deduplication never crosses accounts. A chunk counts as already held only if
        the store has it and the replica's own account holds it: it arrived already for one of
        the account's replicas (so a resumed job does not send it again), or a backup of the
        account whose chunks are all stored (available, or being restored from: a backup still
        being taken or replicated has only part of its chunks) references it. A chunk that only
        another account holds is reported missing and sent again, so that no one learns what
        another account stores; the store still keeps its bytes once."""
        with self._catalog.read() as conn:
            row = self._replica_row(conn, replica_id)
            owner = self._projects.get(row[1])
            projects = [row[1]] + [
                p.project_id
                for p in self._projects.values()
                if owner is not None and p.account_id == owner.account_id and p is not owner
            ]
            marks = ", ".join("?" * len(projects))
            # Per manifest entry: a seek in `chunks`, then in replica_arrivals and in manifest
            # by hash (manifest_by_hash), whose rows are checked against the account's backups
            # (a list made once per query; `+` keeps SQLite from seeking once per backup of
            # the account instead, which costs more the more backups the account has).
            rows = conn.execute(
                "SELECT m.hash, m.length, CASE WHEN c.hash IS NULL THEN 0 "
                "WHEN EXISTS (SELECT 1 FROM replica_arrivals a "
                "JOIN backups r ON r.backup_id = a.replica_id "
                f"WHERE a.hash = m.hash AND r.project_id IN ({marks})) THEN 1 "
                "WHEN EXISTS (SELECT 1 FROM manifest o INDEXED BY manifest_by_hash "
                "WHERE o.hash = m.hash AND +o.backup_id IN (SELECT backup_id FROM backups "
                f"WHERE project_id IN ({marks}) AND status IN (?, ?))) THEN 1 "
                "ELSE 0 END "
                "FROM manifest m LEFT JOIN chunks c ON c.hash = m.hash WHERE m.backup_id = ? "
                "ORDER BY m.disk_index, m.chunk_index",
                (
                    *projects,
                    *projects,
                    BackupStatus.AVAILABLE,
                    BackupStatus.RESTORING,
                    replica_id,
                ),
            ).fetchall()
        missing: dict[bytes, None] = {}
        held = held_bytes = 0
        for digest, length, present in rows:
            if present:
                held += 1
                held_bytes += length
            else:
                missing[digest] = None
        return MissingChunks(
            missing=list(missing),
            chunks_total=len(rows),
            bytes_total=sum(r[1] for r in rows),
            chunks_already_held=held,
            bytes_already_held=held_bytes,
        )

    @needs_space("the replica's chunks")
    def write_chunks(
        self, replica_id: str, chunks: Iterable[tuple[bytes, bytes]]
    ) -> tuple[int, int, int]:
        """Stores chunks of a replica's manifest, each verified against its hash; commits every
        COMMIT_EVERY chunks so that a cut stream keeps what arrived. Returns (chunks written,
        bytes written, chunks already present)."""
        with self._catalog.read() as conn:
            row = self._replica_row(conn, replica_id)
            if BackupStatus(row[6]) != BackupStatus.REPLICATING:
                raise FailedPrecondition(f"replica {replica_id} is not being replicated")
            wanted = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT hash, length FROM manifest WHERE backup_id = ?", (replica_id,)
                )
            }
        written = written_bytes = present = 0
        # Every verified chunk, stored now or already in the store (maybe for another account),
        # pinned by its put: indexed if pending and recorded as arrived for the replica at the
        # next commit (issue 6: deduplication never crosses accounts, so only what arrived for
        # the account counts as held on a resume), then unpinned.
        arrived: list[bytes] = []
        try:
            for digest, data in chunks:
                self._check_hash(digest)
                length = wanted.get(digest)
                if length is None:
                    raise InvalidArgument(f"chunk {digest.hex()} is not in replica {replica_id}")
                if len(data) != length or chunk_hash(data) != digest:
                    raise InvalidArgument(f"chunk {digest.hex()} does not match its hash")
                stored = self._store.put(digest, data)
                arrived.append(digest)
                if stored:
                    written += 1
                    written_bytes += stored
                else:
                    present += 1
                if len(arrived) >= COMMIT_EVERY:
                    self._commit_chunks(replica_id, arrived)
                    arrived = []
        finally:
            # Even when the stream is cut: what arrived whole is kept, indexed and recorded.
            self._commit_chunks(replica_id, arrived)
        return written, written_bytes, present

    def _commit_chunks(self, replica_id: str, arrived: list[bytes]) -> None:
        """Makes every chunk that `arrived` (and was pinned by its put) durable, then in one
        transaction indexes those still pending (this writer's, or another's it found pending:
        durable too after the sync) and records them as arrived for the replica; unpins them
        either way. If it cannot commit, what this writer wrote is abandoned, never reused."""
        if not arrived:
            return
        try:
            self._store.sync()
            self._index_arrivals(replica_id, arrived)
        except BaseException:
            self._store.unpin(arrived)
            self._store.abandon(arrived)
            raise
        self._store.unpin(arrived)

    def _index_arrivals(self, replica_id: str, arrived: list[bytes]) -> None:
        with self._catalog.transaction() as conn:
            status = conn.execute(
                "SELECT status FROM backups WHERE backup_id = ?", (replica_id,)
            ).fetchone()
            if status is None:
                # Removed meanwhile: nothing names these chunks; they are abandoned.
                raise FailedPrecondition(f"replica {replica_id} was removed")
            self._store.index(conn, arrived)
            # A replica that completed meanwhile keeps no arrivals.
            if status[0] == BackupStatus.REPLICATING:
                conn.executemany(
                    "INSERT OR IGNORE INTO replica_arrivals(replica_id, hash) VALUES (?, ?)",
                    [(replica_id, d) for d in arrived],
                )
        self._store.forget_pending(arrived)

    @needs_space("the replica's record")
    def complete_replica(self, replica_id: str) -> Backup:
        with self._catalog.transaction() as conn:
            row = self._replica_row(conn, replica_id)
            status = BackupStatus(row[6])
            if status == BackupStatus.REPLICATING:
                missing, total = conn.execute(
                    "SELECT SUM(c.hash IS NULL), COALESCE(SUM(m.length), 0) FROM manifest m "
                    "LEFT JOIN chunks c ON c.hash = m.hash WHERE m.backup_id = ?",
                    (replica_id,),
                ).fetchone()
                if missing:
                    raise FailedPrecondition(
                        f"replica {replica_id} still lacks {missing} chunks; it cannot be "
                        "marked available"
                    )
                now = _ts(self._clock.now())
                conn.execute(
                    "UPDATE backups SET status = ?, bytes_read = ?, updated_at = ?, "
                    "completed_at = ? WHERE backup_id = ?",
                    (BackupStatus.AVAILABLE, total, now, now, replica_id),
                )
                # Available now, its manifest counts for its account (issue 6): the arrivals
                # are no longer needed.
                conn.execute("DELETE FROM replica_arrivals WHERE replica_id = ?", (replica_id,))
            elif status != BackupStatus.AVAILABLE:
                raise FailedPrecondition(f"replica {replica_id} is {status.name.lower()}")
            result = self._to_backup(conn, self._backup_row(conn, None, replica_id))
        self.notifier.changed(replica_id)
        return result

    @makes_room
    def remove_replica(self, replica_id: str, job_id: str) -> bool:
        """Removes what a replication job left behind. Idempotent."""
        with self._catalog.transaction() as conn:
            if not replica_id and job_id:
                found = conn.execute(
                    "SELECT backup_id FROM backups WHERE origin_job_id = ?", (job_id,)
                ).fetchone()
                replica_id = found[0] if found else ""
            row = conn.execute(
                "SELECT origin_replicated FROM backups WHERE backup_id = ?", (replica_id,)
            ).fetchone()
            if row is None:
                return False
            if not row[0]:
                raise FailedPrecondition(f"backup {replica_id} is not a replica")
            image = conn.execute(
                "SELECT image_id FROM images WHERE backup_id = ? LIMIT 1", (replica_id,)
            ).fetchone()
            if image:
                raise FailedPrecondition(f"replica {replica_id} has image {image[0]}")
            hashes = [
                r[0]
                for r in conn.execute(
                    "SELECT hash FROM manifest WHERE backup_id = ?", (replica_id,)
                )
            ]
            for table in ("manifest", "backup_disks", "replication_records", "backups"):
                conn.execute(f"DELETE FROM {table} WHERE backup_id = ?", (replica_id,))
            conn.execute("DELETE FROM replica_arrivals WHERE replica_id = ?", (replica_id,))
            freed = self._store.unindex(conn, self._store.unreferenced(conn, hashes))
        self._store.release(freed)
        self.notifier.changed(replica_id)
        return True

    @needs_space("the replication record")
    def record_replication(self, backup_id: str, record: ReplicationRecord) -> Backup:
        if not record.job_id or not record.target_region_id:
            raise InvalidArgument("record: job_id and target_region_id are required")
        with self._catalog.transaction() as conn:
            self._backup_row(conn, None, backup_id)
            conn.execute(
                "INSERT INTO replication_records(backup_id, job_id, target_region_id, "
                "target_project_id, replica_id, way, policy_id, status, failure_reason, "
                "replica_deleted, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(backup_id, job_id) DO UPDATE SET "
                "target_project_id = excluded.target_project_id, "
                "replica_id = excluded.replica_id, status = excluded.status, "
                "failure_reason = excluded.failure_reason, "
                "replica_deleted = excluded.replica_deleted, updated_at = excluded.updated_at",
                (
                    backup_id,
                    record.job_id,
                    record.target_region_id,
                    record.target_project_id,
                    record.replica_id,
                    int(record.way),
                    record.policy_id,
                    int(record.status),
                    record.failure_reason,
                    int(record.replica_deleted),
                    _ts(self._clock.now()),
                ),
            )
            result = self._to_backup(conn, self._backup_row(conn, None, backup_id))
        self.notifier.changed(backup_id)
        return result

    @needs_space("the hold on the backup")
    def hold_backup(self, backup_id: str, job_id: str) -> Backup:
        """Keeps a source backup from deletion while a job copies it (R1c, R2 checked)."""
        if not job_id:
            raise InvalidArgument("job_id is required")
        with self._catalog.transaction() as conn:
            row = self._backup_row(conn, None, backup_id)
            held = conn.execute(
                "SELECT 1 FROM holds WHERE backup_id = ? AND job_id = ?", (backup_id, job_id)
            ).fetchone()
            if not held:
                if row[12]:
                    raise FailedPrecondition(
                        f"R2: backup {backup_id} was replicated in from another region; a "
                        "replica cannot be replicated again"
                    )
                if BackupStatus(row[6]) != BackupStatus.AVAILABLE:
                    raise FailedPrecondition(
                        f"R1c: backup {backup_id} is {BackupStatus(row[6]).name.lower()}; only "
                        "an available backup can be replicated"
                    )
                conn.execute(
                    "INSERT INTO holds(backup_id, job_id) VALUES (?, ?)", (backup_id, job_id)
                )
            return self._to_backup(conn, row)

    @makes_room
    def release_backup(self, backup_id: str, job_id: str) -> Backup:
        with self._catalog.transaction() as conn:
            conn.execute(
                "DELETE FROM holds WHERE backup_id = ? AND job_id = ?", (backup_id, job_id)
            )
            return self._to_backup(conn, self._backup_row(conn, None, backup_id))

    @needs_space("the clock's instant")
    def set_clock(self, instant: datetime) -> datetime:
        """Simulated mode: the coordinator moves this node's clock (never backwards); the
        instant is persisted, so a restarted node starts where it was."""
        if not isinstance(self._clock, SimulatedClock):
            raise FailedPrecondition(
                "the cluster clock is not simulated; it follows the wall clock"
            )
        now = self._clock.set(instant)
        self._catalog.put_setting("clock_now", now.isoformat())
        return now

    # -- for tests and reports ----------------------------------------------------------------
    def stored_bytes(self) -> int:
        return self._store.stored_bytes()


_BACKUP_COLUMNS = (
    "backup_id, project_id, name, description, server_id, server_type, status, error_reason, "
    "bytes_to_read, bytes_read, bytes_stored, policy_id, origin_replicated, origin_region_id, "
    "origin_project_id, origin_backup_id, origin_way, origin_policy_id, origin_job_id, "
    "created_at, updated_at, completed_at"
)
