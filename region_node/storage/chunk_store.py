"""The content-addressed chunk store.

Chunks are appended to pack files (as restic does): each record is a 40-byte header (the chunk's
blake3 hash, its length, the record format version) followed by the data, so the index can be
rebuilt from the packs alone. The index (the `chunks` table of the catalog) is committed only
after the pack data is fsynced, in the same transaction as the manifest that references it: a
chunk is either fully there or not there at all. Space of chunks no manifest references is
given back by punching holes in their pack; a pack with no chunks left is deleted. Every read is
verified against the hash: a mismatch is ChunkCorrupted, never wrong bytes.

What keeps a chunk alive (the rules every path that frees chunks keeps):
- a manifest row that names its hash (an available, restoring, replicating or error backup's;
  a running backup's rows shared with its base are committed when it starts);
- a pin: every `put` pins its chunk, whether it wrote it or found it stored, until the writer
  has committed the manifest that references it or has given up (`unpin`). A running backup's
  or replica's chunks that are not committed yet live only in its memory: the pin is what
  deletion sees of them;
- a pending record (written, not yet indexed): only its writer indexes or abandons it.
Space is freed only by `unindex` in a catalog transaction that checked all three, then
`release` after that transaction committed. A record whose write failed is never indexed: its
space is given back at once and its pending entry dropped. Every record written, abandoned or
released is counted in `capacity` (region_node.storage.capacity)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from csbs.errors import ChunkCorrupted
from region_node.catalog import Catalog
from region_node.catalog import chunks as index_of_chunks
from region_node.storage.capacity import Capacity
from region_node.storage.fileio import drop_cache, fsync_dir, punch_hole, write_all, writev_all

log = logging.getLogger(__name__)

HASH_BYTES = 32
PACK_MAGIC = b"CSBSPACK"
PACK_VERSION = 1
PACK_HEADER = struct.Struct("<8sI4x")  # magic, version, padding: 16 bytes
RECORD_VERSION = 1
RECORD_HEADER = struct.Struct("<32sII")  # hash, length, record version: 40 bytes
MAX_PACK_BYTES = 512 << 20
SYNC_EVERY_BYTES = 64 << 20


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The content address of a chunk (blake3; releases the GIL, so threads hash in parallel)."""
    return bytes(blake3.blake3(data).digest())


@dataclass(frozen=True)
class ChunkLocation:
    pack_id: int
    offset: int  # of the data, after the record header
    length: int


class _Pack:
    def __init__(self, pack_id: int, path: Path, fd: int, tail: int) -> None:
        self.pack_id = pack_id
        self.path = path
        self.fd = fd
        self.tail = tail
        self.unsynced = 0
        self.synced_to = tail


class ChunkStore:
    def __init__(self, root: Path, catalog: Catalog) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)
        self._catalog = catalog
        self._lock = threading.Condition()
        self._active: _Pack | None = None
        self._dirty: dict[int, _Pack] = {}  # packs with writes not yet fsynced
        self._inflight = 0
        self._pending: dict[bytes, ChunkLocation] = {}  # written, not yet in the index
        self._pins: Counter[bytes] = Counter()  # chunks put by writers that have not committed
        self._read_fds: dict[int, int] = {}  # by pack: read-write, for reading and freeing
        self._fd_users: Counter[int] = Counter()  # by pack: I/O in progress on its descriptor
        self._closing_fds: dict[int, int] = {}  # of packs deleted while in use: closed when idle
        # Pack IDs come from the files, never the catalog: the store lock is never held while
        # taking the catalog's (lock order: catalog, then store).
        self._next_pack_id = max(self._pack_ids_on_disk(), default=0) + 1
        with catalog.read() as conn:
            count, data = index_of_chunks.totals(conn)
        self.capacity = Capacity(count * RECORD_HEADER.size + data)

    # -- paths --------------------------------------------------------------------------------
    def _pack_path(self, pack_id: int) -> Path:
        return self._root / f"{pack_id:012d}.pack"

    def _pack_ids_on_disk(self) -> list[int]:
        ids = []
        for entry in self._root.iterdir():
            if entry.suffix == ".pack" and entry.stem.isdigit():
                ids.append(int(entry.stem))
        return sorted(ids)

    # -- writing ------------------------------------------------------------------------------
    def _new_pack(self) -> _Pack:
        pack_id = self._next_pack_id
        self._next_pack_id += 1
        path = self._pack_path(pack_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION), 0)
            os.fsync(fd)
            fsync_dir(str(self._root))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return _Pack(pack_id, path, fd, PACK_HEADER.size)

    def is_stored(self, digest: bytes) -> bool:
        """Whether the store holds this chunk (indexed, or written and about to be)."""
        with self._lock:
            if digest in self._pending:
                return True
        with self._catalog.read() as conn:
            return index_of_chunks.location(conn, digest) is not None

    def put(self, digest: bytes, data: bytes | bytearray | memoryview) -> int:
        """Writes a chunk unless the store has it, and pins it either way (see the module's
        rules) until the caller's `unpin`. Returns the bytes newly written. The chunk is
        durable and indexed only after `sync()` and `index()` in the caller's transaction."""
        with self._lock:
            # Pinned before the index is looked at: a deletion that commits after this point
            # sees the pin; one that committed before it is seen as "not stored" below.
            self._pins[digest] += 1
        try:
            return self._write_unless_stored(digest, data)
        except BaseException:
            self.unpin([digest])
            raise

    def put_all(self, chunks: Sequence[tuple[bytes, bytes | memoryview]]) -> list[int]:
        """`put` of several chunks, the index looked at once for them all (issue 12: small
        chunks cost per byte, not per lookup). Each is pinned until the caller's `unpin`.
        Returns the bytes newly written for each. If it raises, nothing of the call stays
        pinned and what it wrote is given back."""
        digests = [d for d, _ in chunks]
        with self._lock:
            self._pins.update(digests)  # before the index is looked at, as in put
        wrote: list[bytes] = []
        try:
            held = {d for d, loc in zip(digests, self.locate_all(digests), strict=True) if loc}
            out = []
            for digest, data in chunks:
                stored = 0 if digest in held else self._write_record(digest, data)
                if stored:
                    wrote.append(digest)
                out.append(stored)
            return out
        except BaseException:
            self.unpin(digests)
            self.abandon(wrote)
            raise

    def _write_unless_stored(self, digest: bytes, data: bytes | bytearray | memoryview) -> int:
        return 0 if self.is_stored(digest) else self._write_record(digest, data)

    def _write_record(self, digest: bytes, data: bytes | bytearray | memoryview) -> int:
        length = len(data)
        with self._lock:
            if digest in self._pending:
                return 0
            pack = self._active
            if pack is None or pack.tail >= MAX_PACK_BYTES:
                pack = self._active = self._new_pack()
            # Counted once nothing else can fail before the record is pending; refused, it
            # leaves nothing written.
            self.capacity.take(RECORD_HEADER.size + length)
            record_at = pack.tail
            pack.tail += RECORD_HEADER.size + length
            self._pending[digest] = ChunkLocation(
                pack.pack_id, record_at + RECORD_HEADER.size, length
            )
            self._dirty[pack.pack_id] = pack
            self._inflight += 1
        try:
            header = RECORD_HEADER.pack(digest, length, RECORD_VERSION)
            writev_all(pack.fd, [header, data], record_at)
        except BaseException:
            # Never indexed, never reused: the half-written record's space goes back now.
            punch_hole(pack.fd, record_at, RECORD_HEADER.size + length)
            with self._lock:
                self._pending.pop(digest, None)
                self.capacity.give_back(RECORD_HEADER.size + length)
                self._inflight -= 1
                self._lock.notify_all()
            raise
        flush = False
        with self._lock:
            self._inflight -= 1
            pack.unsynced += RECORD_HEADER.size + length
            if pack.unsynced >= SYNC_EVERY_BYTES:
                pack.unsynced = 0
                flush = True
            self._lock.notify_all()
        if flush:
            # Bounded dirty memory: flush what was written so far and drop it from the cache.
            os.fdatasync(pack.fd)
            drop_cache(pack.fd, 0, record_at)
        return length

    def pin(self, digests: Iterable[bytes]) -> None:
        """Keeps chunks alive while a reader needs them all (a verification), until `unpin`."""
        with self._lock:
            self._pins.update(digests)

    def unpin(self, digests: Iterable[bytes]) -> None:
        """The writer that put these chunks has committed what references them, or gave up."""
        with self._lock:
            for d in digests:
                left = self._pins[d] - 1
                if left > 0:
                    self._pins[d] = left
                else:
                    del self._pins[d]

    def abandon(self, digests: Iterable[bytes]) -> None:
        """A writer gives up on chunks it wrote and will never index (after its `unpin`): their
        records are forgotten and their space given back, never reused. A chunk another writer
        still has pinned stays pending: that writer found it here and indexes it."""
        with self._lock:
            while self._inflight:
                self._lock.wait()
            dropped = [
                loc
                for d in set(digests)
                if d not in self._pins and (loc := self._pending.pop(d, None))
            ]
            self.capacity.give_back(sum(RECORD_HEADER.size + loc.length for loc in dropped))
        for loc in dropped:
            with self._pack_fd(loc.pack_id) as fd:
                if fd is not None:
                    punch_hole(fd, loc.offset - RECORD_HEADER.size, loc.length + RECORD_HEADER.size)

    def sync(self) -> None:
        """Makes every chunk written so far durable (waits for writes in flight). If the
        filesystem cannot make them durable, the records not yet synced are dropped (never
        indexed: their writers' commits then find them missing) and the pack is retired."""
        with self._lock:
            while self._inflight:
                self._lock.wait()
            packs = [(p, p.synced_to, p.tail) for p in self._dirty.values()]
            for pack, _, tail in packs:
                pack.synced_to = tail
            self._dirty.clear()
        for pack, start, end in packs:
            try:
                os.fdatasync(pack.fd)
            except OSError:
                self._drop_unsynced(pack, start)
                raise
            drop_cache(pack.fd, start, end - start)  # only what this sync made durable

    def _drop_unsynced(self, pack: _Pack, start: int) -> None:
        with self._lock:
            for digest, loc in list(self._pending.items()):
                if loc.pack_id == pack.pack_id and loc.offset >= start:
                    del self._pending[digest]
                    # Never indexed: the next start gives its space back (collect_garbage).
                    self.capacity.give_back(RECORD_HEADER.size + loc.length)
            if self._active is pack:
                self._active = None  # later writes go to a new pack; this one is read-only now

    def index(self, conn: sqlite3.Connection, digests: Iterable[bytes]) -> None:
        """Inside the caller's transaction, after `sync()`: indexes the written chunks among
        `digests` (chunks already indexed are left as they are)."""
        with self._lock:
            rows = [
                (d, loc.pack_id, loc.offset, loc.length)
                for d in digests
                if (loc := self._pending.get(d)) is not None
            ]
        index_of_chunks.add(conn, rows)

    def not_indexed(self, conn: sqlite3.Connection, digests: Iterable[bytes]) -> list[bytes]:
        """Inside the caller's transaction: those of `digests` the index does not hold."""
        wanted = set(digests)
        held = _indexed(conn, wanted)
        return [d for d in wanted if d not in held]

    def forget_pending(self, digests: Iterable[bytes]) -> None:
        """After the transaction that indexed them has committed."""
        with self._lock:
            for d in digests:
                self._pending.pop(d, None)

    # -- reading ------------------------------------------------------------------------------
    def locate(self, digest: bytes) -> ChunkLocation | None:
        with self._lock:
            loc = self._pending.get(digest)
        if loc is not None:
            return loc
        with self._catalog.read() as conn:
            row = index_of_chunks.location(conn, digest)
        return ChunkLocation(row["pack_id"], row["offset"], row["length"]) if row else None

    def locate_all(self, digests: Sequence[bytes]) -> list[ChunkLocation | None]:
        """Where each of `digests` is (None: not stored), looked up BATCH at a query."""
        with self._lock:
            found = {d: loc for d in digests if (loc := self._pending.get(d)) is not None}
        with self._catalog.read() as conn:
            found |= _indexed(conn, {d for d in digests if d not in found})
        return [found.get(d) for d in digests]

    @contextlib.contextmanager
    def _pack_fd(self, pack_id: int) -> Iterator[int | None]:
        """The pack's descriptor, kept open while the block runs (a pack deleted meanwhile is
        closed only once its last user is done, so a descriptor number is never used after it
        was closed and perhaps reused for another file, such as a server's disk); None if the
        pack is gone. Read-write: freeing space punches holes through it."""
        with self._lock:
            fd = self._read_fds.get(pack_id)
            if fd is None:
                try:
                    fd = os.open(self._pack_path(pack_id), os.O_RDWR)
                except FileNotFoundError:
                    fd = None
                else:
                    self._read_fds[pack_id] = fd
            if fd is not None:
                self._fd_users[pack_id] += 1
        try:
            yield fd
        finally:
            if fd is not None:
                with self._lock:
                    self._fd_users[pack_id] -= 1
                    if not self._fd_users[pack_id]:
                        del self._fd_users[pack_id]
                        closing = self._closing_fds.pop(pack_id, None)
                        if closing is not None:
                            os.close(closing)

    def read(self, digest: bytes, buffer: bytearray | None = None) -> memoryview:
        """The chunk's bytes, verified against its hash. Reads into `buffer` when given (it must
        be at least as long as the chunk), so that streaming reuses one buffer."""
        loc = self.locate(digest)
        if loc is None:
            raise ChunkCorrupted(f"chunk {digest.hex()} is missing from the store", digest)
        return self.read_at(digest, loc, buffer)

    def read_at(
        self, digest: bytes, loc: ChunkLocation, buffer: bytearray | None = None
    ) -> memoryview:
        """`read` for a caller that already knows where the chunk is."""
        if buffer is None or len(buffer) < loc.length:
            buffer = bytearray(loc.length)
        view = memoryview(buffer)[: loc.length]
        with self._pack_fd(loc.pack_id) as fd:
            got = -1 if fd is None else os.preadv(fd, [view], loc.offset)
        if got != loc.length or chunk_hash(view) != digest:
            raise ChunkCorrupted(
                f"chunk {digest.hex()} in pack {loc.pack_id} does not match its hash", digest
            )
        return view

    def forget_cached(self, loc: ChunkLocation) -> None:
        """Drops a chunk that was read once from the page cache (streaming, not caching)."""
        with self._pack_fd(loc.pack_id) as fd:
            if fd is not None:
                drop_cache(fd, loc.offset, loc.length)

    def prefetch(self, locations: Iterable[ChunkLocation]) -> None:
        """Asks the kernel to start reading these chunks now, so later reads find them cached."""
        for loc in locations:
            with self._pack_fd(loc.pack_id) as fd:
                if fd is not None:
                    os.posix_fadvise(fd, loc.offset, loc.length, os.POSIX_FADV_WILLNEED)

    def drop_read_cache(self) -> None:
        with self._lock:
            packs = list(self._read_fds)
        for pack_id in packs:
            with self._pack_fd(pack_id) as fd:
                if fd is not None:
                    drop_cache(fd)

    # -- freeing ------------------------------------------------------------------------------
    def unreferenced(self, conn: sqlite3.Connection, digests: Iterable[bytes]) -> list[bytes]:
        """Of `digests`, those nothing keeps alive any more (see the module's rules): no
        manifest references them, no writer has them pinned or pending. Inside the transaction
        that unindexes them."""
        with self._lock:
            # Looked up one by one, never copied: pins and pending records can be many.
            loose = [d for d in set(digests) if d not in self._pending and d not in self._pins]
        out = []
        for batch in index_of_chunks.batches(loose):
            named = index_of_chunks.named_by_manifests(conn, batch)
            out += [d for d in batch if d not in named]
        return out

    def unindex(self, conn: sqlite3.Connection, digests: Iterable[bytes]) -> list[ChunkLocation]:
        """Inside the caller's transaction: removes chunks from the index and returns where they
        were, for `release()` once the transaction has committed."""
        locations = []
        for batch in index_of_chunks.batches(digests):
            rows = index_of_chunks.locations(conn, batch)
            locations += [ChunkLocation(r["pack_id"], r["offset"], r["length"]) for r in rows]
            index_of_chunks.remove_all(conn, [r["hash"] for r in rows])
        return locations

    def freeing(self, conn: sqlite3.Connection) -> Freeing:
        """Inside the transaction of a deletion: a Freeing that unindexes what the hashes given
        to its `check` no longer keep alive, for `release_freed` once it has committed."""
        return Freeing(self, conn)

    def release_freed(self, freeing: Freeing) -> None:
        self._release_ranges(freeing.ranges)

    def release(self, locations: Iterable[ChunkLocation]) -> None:
        """Gives back the space of unindexed chunks; deletes packs that hold nothing any more."""
        self._release_ranges(list(_records_end_to_end(locations)))

    def _release_ranges(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        packs: set[int] = set()
        for pack_id, start, end in ranges:
            packs.add(pack_id)
            self.capacity.give_back(end - start)  # whole records, headers included
            with self._pack_fd(pack_id) as fd:
                # The record headers go too (by whole blocks: the rest reads as zeros). A pack
                # already deleted by a concurrent release has nothing left to free.
                punched = fd is None or punch_hole(fd, start, end - start)
            if not punched:
                log.warning(
                    "pack %d: the filesystem cannot punch holes; space stays in use "
                    "until the pack is empty",
                    pack_id,
                )
        for pack_id in packs:
            self._delete_pack_if_empty(pack_id)

    def _delete_pack_if_empty(self, pack_id: int) -> None:
        with self._catalog.read() as conn, self._lock:
            if self._active is not None and self._active.pack_id == pack_id:
                return
            if any(loc.pack_id == pack_id for loc in self._pending.values()):
                return
            if index_of_chunks.pack_holds_any(conn, pack_id):
                return
            fd = self._read_fds.pop(pack_id, None)
            if fd is not None:
                if self._fd_users[pack_id]:
                    self._closing_fds[pack_id] = fd
                else:
                    os.close(fd)
            self._pack_path(pack_id).unlink(missing_ok=True)

    def collect_garbage(self) -> int:
        """At start, before anything is written: removes what a crash left behind (chunks
        indexed but unreferenced, pack space never indexed). Returns bytes given back."""
        with self._catalog.transaction() as conn:
            orphans = index_of_chunks.named_by_no_manifest(conn)
            freed_locations = self.unindex(conn, orphans)
        self.release(freed_locations)
        freed = sum(loc.length for loc in freed_locations)
        for pack_id in self._pack_ids_on_disk():
            with self._catalog.read() as conn:
                extents = index_of_chunks.extents_of_pack(conn, pack_id)
            path = self._pack_path(pack_id)
            if not extents:
                freed += path.stat().st_size
                path.unlink()
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                position = PACK_HEADER.size
                for offset, length in extents:
                    start = offset - RECORD_HEADER.size
                    if start > position:
                        punch_hole(fd, position, start - position)
                        freed += start - position
                    position = offset + length
                size = os.fstat(fd).st_size
                if size > position:
                    os.ftruncate(fd, position)
                    os.fsync(fd)
                    freed += size - position
            finally:
                os.close(fd)
        return freed

    def indexed(self) -> tuple[int, int]:
        """(chunks indexed, their bytes of data), from a snapshot: the scan holds up no write."""
        with self._catalog.snapshot() as conn:
            return index_of_chunks.totals(conn)

    def stored_bytes(self) -> int:
        """Bytes the packs take on disk (allocated blocks), for tests and reports."""
        total = 0
        for pack_id in self._pack_ids_on_disk():
            with contextlib.suppress(FileNotFoundError):
                total += self._pack_path(pack_id).stat().st_blocks * 512
        return total

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._active is not None:
                os.close(self._active.fd)
                self._active = None
            for fd in [*self._read_fds.values(), *self._closing_fds.values()]:
                os.close(fd)
            self._read_fds.clear()
            self._closing_fds.clear()


def _indexed(conn: sqlite3.Connection, digests: Iterable[bytes]) -> dict[bytes, ChunkLocation]:
    """Where the index says each of `digests` it holds is, looked up BATCH at a query."""
    return {
        r["hash"]: ChunkLocation(r["pack_id"], r["offset"], r["length"])
        for batch in index_of_chunks.batches(digests)
        for r in index_of_chunks.locations(conn, batch)
    }


class Freeing:
    """The chunks a deletion frees, checked a batch of hashes at a time (those of a manifest
    page it removed) and unindexed in the deletion's transaction. What was freed is kept as
    ranges of pack records joined where they lie end to end, so its memory stays small however
    many chunks the deletion frees (issue 12: deleting a backup of 300,000 chunks held their
    hashes and locations, 188 MB)."""

    def __init__(self, store: ChunkStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self._ranges: list[tuple[int, int, int]] = []
        self.bytes = 0  # chunk bytes freed

    def check(self, digests: Iterable[bytes]) -> None:
        """Unindexes those of `digests` nothing keeps alive any more (named by no manifest page
        left, not pinned, not pending)."""
        store, conn = self._store, self._conn
        locations = store.unindex(conn, store.unreferenced(conn, digests))
        self.bytes += sum(loc.length for loc in locations)
        self._ranges += _records_end_to_end(locations)  # joined within the batch

    @property
    def ranges(self) -> list[tuple[int, int, int]]:
        """Every range freed, joined across batches (once, when the space is given back)."""
        return list(_ranges_joined(self._ranges))


def _ranges_joined(ranges: Iterable[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    run: list[int] | None = None
    for pack_id, start, end in sorted(ranges):
        if run is not None and run[0] == pack_id and run[2] == start:
            run[2] = end
            continue
        if run is not None:
            yield run[0], run[1], run[2]
        run = [pack_id, start, end]
    if run is not None:
        yield run[0], run[1], run[2]


def _records_end_to_end(locations: Iterable[ChunkLocation]) -> Iterator[tuple[int, int, int]]:
    """(pack_id, start, end) of the records of `locations` (header included), records that lie
    end to end in a pack joined into one range: a backup's chunks were written one after the
    other, so deleting it punches a few holes, not one per chunk (issue 12)."""
    return _ranges_joined(
        (loc.pack_id, loc.offset - RECORD_HEADER.size, loc.offset + loc.length) for loc in locations
    )
