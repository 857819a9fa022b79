"""One region node: builds its catalog, storage, engine and services, brings the catalog back to
a consistent state at `start()`, and stops cleanly at `close()`.

Locks, in the order they are taken (a lock is only ever taken while holding those above it):
1. Disk gates (`DiskState.gate`), several in disk-index order. A write holds its disk's gate
   while it marks its chunks written, preserves what a running backup still needs and writes;
   a backup's start, a restore's start, a fill's start and end, and a server's deletion hold
   the gates of all their disks while they check and commit, so that no write or other
   operation slips between a check and what it decided.
2. A running backup's stripe locks (`BackupSession.locks`): whoever takes a chunk out of the
   backup's to-do set (its reader, or a writer's copy-on-write) reads it under the chunk's
   stripe; nothing else is taken while holding one.
3. The catalog lock (`Database._lock`): the one SQLite connection, for reads and for the one
   transaction of each logical step.
4. The chunk store lock (`ChunkStore._lock`): pending records, pins, packs. Taken inside a
   catalog transaction (to see pins and pending records when deciding what to free), never the
   other way round.
5. The region outage's lock (`OutageService._lock`), taken only to change the outage: the
   catalog is taken under it for its one setting, and the health servicer's (a leaf) to show it.
6. Leaves, under which nothing is taken: the disks registry (`NodeParts._disks_lock`), the
   notifier, a progress counter, the reserved room, a disk's descriptor lock, the chunk
   store's capacity count, the metrics' counters (`csbs.tally.Tally._lock` and
   prometheus_client's own). A metrics scrape takes no lock of these: its scans read a
   snapshot connection of their own (`Database.snapshot`).

What keeps a chunk alive: see region_node.storage.chunk_store (a manifest row, a writer's pin,
a pending record).

States that exist only while work runs, and what `start()` does with each (before anything can
reach the node):
- backup CREATING: ERROR ("the region node stopped while this backup was being taken"), its
  manifest dropped; what it stored and nothing else names is given back (garbage collection).
- backup RESTORING: stays RESTORING while a server is being restored from it (that restore
  resumes), else AVAILABLE again.
- server CREATING (from an image) and RESTORING: the fill starts again from the beginning
  (its image, resp. its RESTORING backup, still protects the backup it reads).
- server DELETING: the deletion is finished.
- replica REPLICATING: left as it is; its job (the coordinator) resumes or removes it.
Then disk files no server names are removed.

The region's capacity and its projects' quotas are set from the config and the catalog before
that (region_node.services.limits: which wins); the chunk store counts what it holds from its
index, and the garbage collected at start is given back from that count."""

from __future__ import annotations

import logging
from datetime import datetime

from csbs.clock import Clock, SimulatedClock
from csbs.tally import Figure
from region_node.catalog import Catalog
from region_node.catalog import backups as backup_rows
from region_node.catalog import images as image_rows
from region_node.catalog import servers as server_rows
from region_node.config import NodeConfig
from region_node.engine.backup import BackupEngine
from region_node.engine.disk_io import DiskIO
from region_node.engine.fill import FillEngine
from region_node.engine.transfer import ChunkTransfer
from region_node.engine.verify import Verifier
from region_node.models import ServerStatus
from region_node.parts import NodeParts
from region_node.services.backups import BackupService
from region_node.services.images import ImageService
from region_node.services.limits import LimitService
from region_node.services.outage import OutageService
from region_node.services.region import RegionService
from region_node.services.replicas import ReplicaService
from region_node.services.servers import ServerService

log = logging.getLogger(__name__)

# The format of what the node keeps on disk beside the catalog's schema (pack and record
# formats are versioned in their headers): a node refuses data it does not know.
CHUNK_SIZE_SETTING = "chunk_size"


class ChunkSizeMismatch(RuntimeError):
    """The node's data was written with another chunk size than the config gives."""


class RegionNode:
    def __init__(self, config: NodeConfig, clock: Clock) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(config.data_dir / "catalog.db")
        stored = int(catalog.setting(CHUNK_SIZE_SETTING, str(config.chunk_size)))
        if stored != config.chunk_size:
            catalog.close()
            raise ChunkSizeMismatch(
                f"the data in {config.data_dir} was written with chunk_size {stored} but "
                f"cluster.chunk_size is {config.chunk_size}; start with chunk_size = {stored}, "
                "or with another data_dir"
            )
        if isinstance(clock, SimulatedClock):
            clock.set(datetime.fromisoformat(catalog.setting("clock_now", clock.now().isoformat())))
        self.parts = parts = NodeParts(config, clock, catalog)
        self.region = RegionService(parts)
        self.outage = OutageService(parts, config.starts_out)
        self.limits = LimitService(parts, self.region)
        self.fill = FillEngine(parts)
        self.servers = ServerService(parts, self.region, DiskIO(parts), self.fill)
        self.backup_engine = BackupEngine(parts, self.limits.admit)
        self.backups = BackupService(
            parts, self.region, self.servers, self.backup_engine, self.fill, Verifier(parts)
        )
        self.images = ImageService(parts, self.region)
        self.replicas = ReplicaService(
            parts, self.region, self.backups, ChunkTransfer(parts), self.limits.admit
        )

    def start(self) -> RegionNode:
        """Brings the catalog back to a consistent state after any stop, clean or not (see the
        module's docstring), and resumes the work that was running."""
        parts = self.parts
        with parts.catalog.transaction() as conn:
            interrupted = backup_rows.fail_interrupted(
                conn, "the region node stopped while this backup was being taken", parts.now()
            )
            backup_rows.settle_restoring(conn)
            known = server_rows.all_disk_ids(conn)
            unfinished = server_rows.unfinished(conn)
            images = {r["image_id"]: image_rows.backup_of(conn, r["image_id"]) for r in unfinished}
        freed = parts.store.collect_garbage()
        orphans = 0
        for entry in parts.disk_dir.iterdir():
            if entry.suffix == ".disk" and entry.stem not in known:
                entry.unlink(missing_ok=True)
                orphans += 1
        if interrupted or freed or orphans:
            log.info(
                "recovered: %d interrupted backups marked error, %d bytes of garbage freed, "
                "%d disk files no server names removed",
                len(interrupted),
                freed,
                orphans,
            )
        for row in unfinished:
            status = ServerStatus(row["status"])
            if status == ServerStatus.DELETING:
                parts.jobs.submit(self.servers.finish_delete, row["server_id"])
            elif status == ServerStatus.CREATING:
                self.fill.start(row["server_id"], images[row["image_id"]], zero_first=False)
            else:
                self.fill.start(row["server_id"], row["restoring_backup_id"], zero_first=True)
        return self

    def close(self) -> None:
        parts = self.parts
        parts.closing.set()
        parts.jobs.shutdown(wait=True, cancel_futures=False)
        parts.workers.shutdown(wait=True)
        parts.close_disks()
        parts.store.close()
        parts.catalog.close()

    def figures(self) -> list[Figure]:
        """The node's storage as its metrics show it when scraped (issue 14)."""
        parts = self.parts
        limit, used = parts.store.capacity.usage()
        chunks, data = parts.store.indexed()
        with parts.catalog.snapshot() as conn:
            disks, disk_bytes = server_rows.disk_totals(conn)
        return [
            Figure(
                "csbs_chunk_store_bytes",
                "Bytes of chunk records the region's chunk store holds (data and headers), as "
                "GetRegionCapacity's used_bytes",
                used,
            ),
            Figure(
                "csbs_chunk_store_capacity_bytes",
                "The chunk store's capacity (0: unlimited)",
                limit,
            ),
            Figure("csbs_chunk_store_chunks", "Chunks the chunk store holds (indexed)", chunks),
            Figure("csbs_chunk_store_data_bytes", "Bytes of data of the chunks held", data),
            Figure("csbs_disks", "Server disks the region holds", disks),
            Figure("csbs_disk_bytes", "Bytes of the server disks the region holds", disk_bytes),
        ]

    def stored_bytes(self) -> int:
        """Bytes the chunk store takes on disk, for tests and reports."""
        return self.parts.store.stored_bytes()
