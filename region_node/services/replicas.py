"""Replication, the node's side (only the coordinator calls these): a source backup's manifest
and chunks, held while a job copies it; a replica created with its whole manifest, filled with
the chunks it lacks, completed once it holds them all (P4), or removed; the source's
replication records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from csbs.errors import (
    BackupNotAvailable,
    FailedPrecondition,
    InvalidArgument,
    RegionRefusesReplication,
    ReplicaCannotBeReplicated,
)
from csbs.names import validate_description, validate_name
from region_node.catalog import backups as backup_rows
from region_node.catalog import replica_deletions as deletion_rows
from region_node.catalog import replicas as replica_rows
from region_node.catalog.replica_deletions import DeletedReplica
from region_node.engine.backup import Admit
from region_node.engine.transfer import MANIFEST_PART, ChunkTransfer, check_hash
from region_node.models import (
    Backup,
    BackupStatus,
    ManifestEntry,
    MissingChunks,
    ReplicaSpec,
    ReplicationRecord,
)
from region_node.parts import NodeParts, makes_room, needs_space, new_id
from region_node.services.backups import BackupService
from region_node.services.region import RegionService
from region_node.services.servers import MAX_DISKS, check_disk_size
from region_node.storage.spool import ManifestSpool


class ReplicaService:
    def __init__(
        self,
        parts: NodeParts,
        region: RegionService,
        backups: BackupService,
        transfer: ChunkTransfer,
        admit: Admit,
    ) -> None:
        self._parts = parts
        self._region = region
        self._backups = backups
        self._transfer = transfer
        self._admit = admit

    # -- the source side ------------------------------------------------------------------------
    def manifest(self, backup_id: str) -> Iterator[list[ManifestEntry]]:
        return self._transfer.manifest(backup_id)

    def read_chunks(self, hashes: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        return self._transfer.read_chunks(hashes)

    @needs_space("the hold on the backup")
    def hold(self, backup_id: str, job_id: str) -> Backup:
        """Keeps a source backup from deletion while a job copies it (R1c, R2 checked)."""
        if not job_id:
            raise InvalidArgument("job_id is required")
        with self._parts.catalog.transaction() as conn:
            row = backup_rows.row(conn, None, backup_id)
            if not backup_rows.is_held_by(conn, backup_id, job_id):
                if row["origin_replicated"]:
                    raise ReplicaCannotBeReplicated(backup_id, row["origin_region_id"])
                status = BackupStatus(row["status"])
                if status != BackupStatus.AVAILABLE:
                    raise BackupNotAvailable(backup_id, status.name.lower())
                backup_rows.hold(conn, backup_id, job_id)
            return backup_rows.to_backup(conn, row)

    @makes_room
    def release(self, backup_id: str, job_id: str) -> Backup:
        with self._parts.catalog.transaction() as conn:
            backup_rows.release(conn, backup_id, job_id)
            return backup_rows.to_backup(conn, backup_rows.row(conn, None, backup_id))

    @needs_space("the replication record")
    def record(self, backup_id: str, record: ReplicationRecord) -> Backup:
        if not record.job_id or not record.target_region_id:
            raise InvalidArgument("record: job_id and target_region_id are required")
        with self._parts.catalog.transaction() as conn:
            backup_rows.row(conn, None, backup_id)
            backup_rows.record(conn, backup_id, record, self._parts.now())
            result = backup_rows.to_backup(conn, backup_rows.row(conn, None, backup_id))
        self._parts.notifier.changed(backup_id)
        return result

    # -- the target side ------------------------------------------------------------------------
    def deleted_replicas(self, after_seq: int, size: int) -> tuple[list[DeletedReplica], int]:
        """The replicas deleted here after `after_seq`, in order, and the newest seq there is."""
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative")
        if not 0 <= size <= deletion_rows.MAX_PAGE:
            raise InvalidArgument(f"page_size: 0 (default {deletion_rows.MAX_PAGE}) to 1000")
        with self._parts.catalog.read() as conn:
            found = deletion_rows.after(conn, after_seq, size or deletion_rows.MAX_PAGE)
            return found, deletion_rows.last_seq(conn)

    @needs_space("the replica")
    def create(self, spec: ReplicaSpec, entries: Iterable[ManifestEntry]) -> Backup:
        """A replica in status REPLICATING with its whole manifest; idempotent by job ID."""
        parts = self._parts
        with parts.catalog.read() as conn:
            existing = replica_rows.of_job(conn, spec.job_id) if spec.job_id else None
        if existing:
            return self._backups.get_any(existing)
        if not self._region.accepts_replication:
            raise RegionRefusesReplication(parts.region_id)
        if not spec.job_id:
            raise InvalidArgument("job_id: a replica is created for a replication job")
        project_id = self._region.resolve_project(spec.project_id)
        validate_name(spec.name)
        validate_description(spec.description)
        if not spec.origin.replicated or not spec.origin.source_backup_id:
            raise InvalidArgument("origin: a replica records its source region and backup")
        if not 1 <= len(spec.disks) <= MAX_DISKS:
            raise InvalidArgument(f"disks: 1 to {MAX_DISKS}")
        sizes: dict[int, int] = {}
        for disk in spec.disks:
            check_disk_size(f"disks[{disk.disk_index}].size_bytes", disk.size_bytes)
            if disk.disk_index in sizes or disk.disk_index >= MAX_DISKS:
                raise InvalidArgument(f"disks: disk_index {disk.disk_index} is invalid or twice")
            sizes[disk.disk_index] = disk.size_bytes
        replica_id = new_id()
        with ManifestSpool(parts.config.data_dir) as spool:
            for entry in self._checked_manifest(entries, sizes):
                spool.add(entry)
            with parts.catalog.transaction() as conn:
                again = replica_rows.of_job(conn, spec.job_id)
                if again is None:
                    # The project's quotas, checked where the replica is inserted (a refusal
                    # fails its job: the coordinator does not retry RESOURCE_EXHAUSTED).
                    self._admit(conn, project_id, sum(sizes.values()), "the replica")
                    replica_rows.insert(
                        conn,
                        replica_id,
                        project_id,
                        spec,
                        spool.bytes_named,
                        spool.batches(),
                        parts.catalog.next_seq(conn, "backup"),
                        parts.now(),
                    )
                else:
                    replica_id = again
        parts.notifier.changed(replica_id)
        return self._backups.get_any(replica_id)

    def _checked_manifest(
        self, entries: Iterable[ManifestEntry], sizes: dict[int, int]
    ) -> Iterator[ManifestEntry]:
        """The entries as they come, each checked; in strictly increasing (disk_index,
        chunk_index) order, as GetBackupManifest sends them, so that an entry given twice is
        found without remembering them all (issue 12)."""
        parts = self._parts
        last: tuple[int, int] | None = None
        for entry in entries:
            size = sizes.get(entry.disk_index)
            if size is None:
                raise InvalidArgument(f"manifest: disk_index {entry.disk_index} is not a disk")
            if not 0 <= entry.chunk_index < parts.chunks_in(size):
                raise InvalidArgument(
                    f"manifest: chunk_index {entry.chunk_index} is past the end of its disk"
                )
            if entry.length != parts.chunk_length(size, entry.chunk_index):
                raise InvalidArgument(
                    f"manifest: chunk {entry.chunk_index} has length "
                    f"{entry.length}, expected its chunk's size"
                )
            check_hash(entry.hash)
            key = (entry.disk_index, entry.chunk_index)
            if last is not None and key <= last:
                raise InvalidArgument(
                    f"manifest: chunk {key} "
                    + ("appears twice" if key == last else f"comes after {last}")
                    + "; entries go in order of disk_index, then chunk_index"
                )
            last = key
            yield entry

    def find_missing_chunks(
        self, replica_id: str, page_token: str = "", page_size: int = 0
    ) -> MissingChunks:
        """The chunks of a replica's manifest the coordinator must send, and those it need not,
        a page of manifest entries at a time (issue 12: no answer grows with the replica); the
        first page (empty token) also counts the whole manifest.

        Issue 6: deduplication never crosses accounts. A chunk counts as already held only if
        the store has it and the replica's own account holds it: it arrived already for one of
        the account's replicas (so a resumed job does not send it again), or a whole backup of
        the account references it. A chunk only another account holds is reported missing and
        sent again, so that no one learns what another account stores; the store still keeps
        its bytes once."""
        if not 0 <= page_size <= MANIFEST_PART:
            raise InvalidArgument(f"page_size: 0 (default {MANIFEST_PART}) to {MANIFEST_PART}")
        after = _position_of_token(page_token)
        size = page_size or MANIFEST_PART
        with self._parts.catalog.read() as conn:
            row = backup_rows.row(conn, None, replica_id)
            if not row["origin_replicated"]:
                raise FailedPrecondition(f"backup {replica_id} is not a replica")
            projects = self._region.account_projects(row["project_id"])
            entries = replica_rows.held_by_account(conn, replica_id, projects, after, size)
            totals = (
                replica_rows.held_totals(conn, replica_id, projects)
                if after is None
                else (0, 0, 0, 0)
            )
        missing = dict.fromkeys(e[2] for e in entries if not e[4])
        last = entries[-1] if len(entries) == size else None
        return MissingChunks(
            missing=list(missing),
            chunks_total=totals[0],
            bytes_total=totals[1],
            chunks_already_held=totals[2],
            bytes_already_held=totals[3],
            next_page_token="" if last is None else f"{last[0]}.{last[1]}",
        )

    @needs_space("the replica's chunks")
    def write_chunks(
        self, replica_id: str, chunks: Iterable[tuple[bytes, bytes]]
    ) -> tuple[int, int, int]:
        return self._transfer.write_chunks(replica_id, chunks)

    @needs_space("the replica's record")
    def complete(self, replica_id: str) -> Backup:
        parts = self._parts
        with parts.catalog.transaction() as conn:
            row = backup_rows.row(conn, None, replica_id)
            if not row["origin_replicated"]:
                raise FailedPrecondition(f"backup {replica_id} is not a replica")
            status = BackupStatus(row["status"])
            if status == BackupStatus.REPLICATING:
                lacking, total = replica_rows.lacking_and_total(conn, replica_id)
                if lacking:
                    raise FailedPrecondition(
                        f"replica {replica_id} still lacks {lacking} chunks; it cannot be "
                        "marked available"
                    )
                replica_rows.complete(conn, replica_id, total, parts.now())
            elif status != BackupStatus.AVAILABLE:
                raise FailedPrecondition(f"replica {replica_id} is {status.name.lower()}")
            result = backup_rows.to_backup(conn, backup_rows.row(conn, None, replica_id))
        parts.notifier.changed(replica_id)
        return result

    @makes_room
    def remove(self, replica_id: str, job_id: str) -> bool:
        """Removes what a replication job left behind. Idempotent."""
        parts = self._parts
        with parts.catalog.transaction() as conn:
            if not replica_id and job_id:
                replica_id = replica_rows.of_job(conn, job_id) or ""
            if backup_rows.status_of(conn, replica_id) is None:
                return False
            if not backup_rows.row(conn, None, replica_id)["origin_replicated"]:
                raise FailedPrecondition(f"backup {replica_id} is not a replica")
            image = backup_rows.image_of(conn, replica_id)
            if image:
                raise FailedPrecondition(f"replica {replica_id} has image {image}")
            freeing = parts.store.freeing(conn)
            backup_rows.delete(conn, replica_id, freeing.check)
        parts.store.release_freed(freeing)
        parts.notifier.changed(replica_id)
        return True


def _position_of_token(token: str) -> tuple[int, int] | None:
    """The manifest position (disk_index, chunk_index) a FindMissingChunks page token names."""
    if not token:
        return None
    disk, dot, chunk = token.partition(".")
    if not (dot and disk.isdigit() and chunk.isdigit()):
        raise InvalidArgument(f"page_token {token!r} is not one this node gave")
    return int(disk), int(chunk)
