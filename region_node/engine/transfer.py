"""Chunks in and out for replication: a backup's manifest in parts, its chunks read (verified,
read ahead, dropped from the page cache once sent), and a replica's chunks written (verified
against their hash, pinned, committed every COMMIT_EVERY_BYTES so that a cut stream keeps what
arrived whole)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

from csbs import tally
from csbs.errors import ChunkCorrupted, FailedPrecondition, InvalidArgument, NotFound
from region_node.catalog import backups as backup_rows
from region_node.catalog import manifests
from region_node.catalog import replicas as replica_rows
from region_node.engine.damage import chunk_damaged
from region_node.models import BackupStatus, ManifestEntry
from region_node.parts import NodeParts
from region_node.storage.chunk_store import HASH_BYTES, chunk_hash

MANIFEST_PART = 4096  # entries in one manifest message, hashes in one ReadChunks request
# Bytes received for a replica between two commits (a sync and a transaction each): by bytes,
# not chunks, so that small chunks cost what their bytes cost (issue 12: 32 MiB is 32 chunks of
# 1 MiB, 512 of 64 KiB).
COMMIT_EVERY_BYTES = 32 << 20
PREFETCH_CHUNKS = 16
# Chunks arriving for a replica are stored a group at a time (one index lookup for the group):
# at most this many bytes, so a group of small chunks is a ChunkBatch's worth and 1 MiB chunks
# go one by one (nothing read ahead of what is stored).
GROUP_BYTES = 1 << 20


def _groups(
    chunks: Iterable[tuple[bytes, bytes]], most_bytes: int
) -> Generator[list[tuple[bytes, bytes]], None, None]:
    """`chunks` in groups of at most `most_bytes` (at least one chunk each). If `chunks` fails
    (a cut stream), the chunks that arrived whole before it are still given, then the error."""
    group: list[tuple[bytes, bytes]] = []
    size = 0
    try:
        for chunk in chunks:
            if group and size + len(chunk[1]) > most_bytes:
                yield group
                group, size = [], 0
            group.append(chunk)
            size += len(chunk[1])
    except Exception:  # not GeneratorExit: a consumer that stops is not a cut stream
        if group:
            yield group
        raise
    if group:
        yield group


def check_hash(digest: bytes) -> None:
    if len(digest) != HASH_BYTES:
        raise InvalidArgument(f"hash: {len(digest)} bytes, a chunk hash has {HASH_BYTES}")


class ChunkTransfer:
    def __init__(self, parts: NodeParts) -> None:
        self._parts = parts

    def manifest(self, backup_id: str) -> Iterator[list[ManifestEntry]]:
        """A backup's non-zero chunks, in order, in parts of at most MANIFEST_PART entries, each
        part read in a short read of its own (issue 12: never the whole manifest at once). A
        backup being copied is held, so it stays; if it went all the same, the stream fails
        rather than end early: a replica is never made from part of a manifest."""
        after: tuple[int, int] | None = None
        while True:
            with self._parts.catalog.read() as conn:
                backup_rows.row(conn, None, backup_id)
                part = manifests.entries_after(conn, backup_id, after, MANIFEST_PART)
            if not part:
                return
            yield part
            if len(part) < MANIFEST_PART:
                return
            after = (part[-1].disk_index, part[-1].chunk_index)

    def read_chunks(self, hashes: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """The named chunks, verified; read ahead a window at a time and dropped from the page
        cache once sent (a replication streams them, it does not need them again)."""
        store = self._parts.store
        if len(hashes) > MANIFEST_PART:
            raise InvalidArgument(f"hashes: {len(hashes)} given, at most {MANIFEST_PART}")
        for digest in hashes:
            check_hash(digest)
        locations = []
        for digest, loc in zip(hashes, store.locate_all(hashes), strict=True):
            if loc is None:
                raise NotFound("chunk", digest.hex())
            locations.append(loc)
        store.prefetch(locations[:PREFETCH_CHUNKS])
        buf = bytearray(self._parts.chunk_size)
        for i, (digest, loc) in enumerate(zip(hashes, locations, strict=True)):
            if i + PREFETCH_CHUNKS < len(locations):
                store.prefetch([locations[i + PREFETCH_CHUNKS]])
            try:
                data = bytes(store.read_at(digest, loc, buf))
            except ChunkCorrupted as exc:
                chunk_damaged(
                    self._parts, digest, f"found by a replication reading it: {exc.message}"
                )
                raise
            store.forget_cached(loc)
            yield digest, data

    def write_chunks(
        self, replica_id: str, chunks: Iterable[tuple[bytes, bytes]]
    ) -> tuple[int, int, int]:
        """Stores chunks of a replica's manifest, each verified against its hash. Returns
        (chunks written, bytes written, chunks already present)."""
        parts = self._parts
        with parts.catalog.read() as conn:
            row = backup_rows.row(conn, None, replica_id)
            if not row["origin_replicated"]:
                raise FailedPrecondition(f"backup {replica_id} is not a replica")
            if BackupStatus(row["status"]) != BackupStatus.REPLICATING:
                raise FailedPrecondition(f"replica {replica_id} is not being replicated")
        written = written_bytes = present = 0
        # Every verified chunk, stored now or already in the store (maybe for another account),
        # pinned by its put: indexed if pending and recorded as arrived for the replica at the
        # next commit (issue 6: deduplication never crosses accounts, so only what arrived for
        # the account counts as held on a resume), then unpinned.
        # Whether each is in the replica's manifest is checked at the commit, a batch in one
        # query (issue 12: never the whole manifest in memory); one that is not fails the call
        # and what it wrote is abandoned.
        arrived: list[tuple[bytes, int]] = []
        arrived_bytes = received = 0
        try:
            for group in _groups(chunks, GROUP_BYTES):
                # The chunks before a bad one are stored, as when they came one by one.
                good, bad = self._verified(group)
                for (digest, data), stored in zip(good, parts.store.put_all(good), strict=True):
                    arrived.append((digest, len(data)))
                    if stored:
                        written += 1
                        written_bytes += stored
                    else:
                        present += 1
                    arrived_bytes += len(data)
                    received += len(data)
                if bad is not None:
                    raise bad
                if arrived_bytes >= COMMIT_EVERY_BYTES:
                    arrived_bytes = 0
                    # Taken out first: a commit that fails has unpinned its batch, and the one
                    # below must not unpin it again (another writer's pin would go).
                    batch, arrived = arrived, []
                    self._commit(replica_id, batch)
        finally:
            # Even when the stream is cut: what arrived whole is kept, indexed and recorded.
            self._commit(replica_id, arrived)
            parts.tally.add(tally.REPLICATION_BYTES_RECEIVED, received)
            parts.tally.add(tally.REPLICATION_BYTES_STORED, written_bytes)
        return written, written_bytes, present

    def _verified(
        self, group: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], InvalidArgument | None]:
        """The chunks of `group` before the first that does not match its hash, and the error
        that one makes (None if all match)."""
        for i, (digest, data) in enumerate(group):
            try:
                check_hash(digest)
                if len(data) > self._parts.chunk_size or chunk_hash(data) != digest:
                    raise InvalidArgument(f"chunk {digest.hex()} does not match its hash")
            except InvalidArgument as exc:
                return group[:i], exc
        return group, None

    def _commit(self, replica_id: str, chunks: list[tuple[bytes, int]]) -> None:
        """Checks that the replica's manifest names every chunk that arrived (hash, length),
        makes them durable, then in one transaction indexes those still pending (this
        writer's, or another's it found pending: durable too after the sync) and records them
        as arrived for the replica; unpins them either way. If it cannot commit, what this
        writer wrote is abandoned, never reused."""
        if not chunks:
            return
        arrived = [digest for digest, _ in chunks]
        store = self._parts.store
        try:
            with self._parts.catalog.read() as conn:
                named = replica_rows.lengths_named(conn, replica_id, sorted(set(arrived)))
                # A replica removed since the call began names nothing: say so, not that the
                # chunks are strangers to it (the node soak saw RemoveReplica race WriteChunks).
                if (
                    len(named) < len(set(arrived))
                    and backup_rows.status_of(conn, replica_id) is None
                ):
                    raise FailedPrecondition(f"replica {replica_id} was removed")
            for digest, length in chunks:
                if digest not in named:
                    raise InvalidArgument(f"chunk {digest.hex()} is not in replica {replica_id}")
                if named[digest] != length:
                    raise InvalidArgument(
                        f"chunk {digest.hex()} has {length} bytes, replica {replica_id}'s "
                        f"manifest says {named[digest]}"
                    )
            store.sync()
            with self._parts.catalog.transaction() as conn:
                status = backup_rows.status_of(conn, replica_id)
                if status is None:
                    # Removed meanwhile: nothing names these chunks; they are abandoned.
                    raise FailedPrecondition(f"replica {replica_id} was removed")
                store.index(conn, arrived)
                # A replica that completed meanwhile keeps no arrivals.
                if status == BackupStatus.REPLICATING:
                    replica_rows.add_arrivals(conn, replica_id, arrived)
            store.forget_pending(arrived)
        except BaseException:
            store.unpin(arrived)
            store.abandon(arrived)
            raise
        store.unpin(arrived)
