"""The catalog's schema: every table of the node, with a version migrated on start."""

from __future__ import annotations

SCHEMA_VERSION = 7

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE servers (
        server_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        server_type INTEGER NOT NULL,
        status INTEGER NOT NULL,
        image_id TEXT NOT NULL DEFAULT '',
        restoring_backup_id TEXT NOT NULL DEFAULT '',
        error_reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX servers_by_project ON servers(project_id, seq);
    CREATE TABLE disks (
        disk_id TEXT PRIMARY KEY,
        server_id TEXT NOT NULL,
        disk_index INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        epoch INTEGER NOT NULL DEFAULT 1,
        UNIQUE (server_id, disk_index)
    );
    -- The last epoch in which each chunk of a disk was written. A write commits its row before
    -- it is acknowledged, so an incremental backup never misses it.
    CREATE TABLE written_chunks (
        disk_id TEXT NOT NULL,
        chunk_index INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        PRIMARY KEY (disk_id, chunk_index)
    ) WITHOUT ROWID;
    CREATE TABLE backups (
        backup_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        server_id TEXT NOT NULL,
        server_type INTEGER NOT NULL,
        status INTEGER NOT NULL,
        error_reason TEXT NOT NULL DEFAULT '',
        bytes_to_read INTEGER NOT NULL DEFAULT 0,
        bytes_read INTEGER NOT NULL DEFAULT 0,
        bytes_stored INTEGER NOT NULL DEFAULT 0,
        policy_id TEXT NOT NULL DEFAULT '',
        origin_replicated INTEGER NOT NULL DEFAULT 0,
        origin_region_id TEXT NOT NULL DEFAULT '',
        origin_project_id TEXT NOT NULL DEFAULT '',
        origin_backup_id TEXT NOT NULL DEFAULT '',
        origin_way INTEGER NOT NULL DEFAULT 0,
        origin_policy_id TEXT NOT NULL DEFAULT '',
        origin_job_id TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        completed_at REAL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX backups_by_project ON backups(project_id, seq);
    CREATE INDEX backups_by_server ON backups(server_id, seq);
    CREATE UNIQUE INDEX replica_by_job ON backups(origin_job_id) WHERE origin_job_id != '';
    CREATE TABLE backup_disks (
        backup_id TEXT NOT NULL,
        disk_index INTEGER NOT NULL,
        disk_id TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        PRIMARY KEY (backup_id, disk_index)
    ) WITHOUT ROWID;
    -- Every non-zero chunk of every disk of every backup, absent means all zeros.
    CREATE TABLE manifest (
        backup_id TEXT NOT NULL,
        disk_index INTEGER NOT NULL,
        chunk_index INTEGER NOT NULL,
        hash BLOB NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (backup_id, disk_index, chunk_index)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_by_hash ON manifest(hash);
    -- Where each stored chunk lives: its data is at [offset, offset + length) of a pack file.
    CREATE TABLE chunks (
        hash BLOB PRIMARY KEY,
        pack_id INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX chunks_by_pack ON chunks(pack_id, offset);
    CREATE TABLE images (
        image_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        backup_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX images_by_backup ON images(backup_id);
    CREATE INDEX images_by_project ON images(project_id, seq);
    CREATE TABLE replication_records (
        backup_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        target_region_id TEXT NOT NULL,
        target_project_id TEXT NOT NULL,
        replica_id TEXT NOT NULL,
        way INTEGER NOT NULL,
        policy_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        failure_reason TEXT NOT NULL,
        replica_deleted INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (backup_id, job_id)
    ) WITHOUT ROWID;
    CREATE TABLE holds (
        backup_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        PRIMARY KEY (backup_id, job_id)
    ) WITHOUT ROWID;
    -- Idempotency: a create retried with the same request ID returns the first resource.
    CREATE TABLE requests (
        kind TEXT NOT NULL,
        project_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        PRIMARY KEY (kind, project_id, request_id)
    ) WITHOUT ROWID;
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sequence (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    2: """
    -- The chunks that have arrived for each replica still being replicated (issue 6:
    -- deduplication never crosses accounts): a resumed job counts them as already held.
    -- Written in the transaction that indexes them, deleted once the replica completes or is
    -- removed (no semicolons in these comments: a migration is split on them).
    CREATE TABLE replica_arrivals (
        replica_id TEXT NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (replica_id, hash)
    ) WITHOUT ROWID;
    CREATE INDEX replica_arrivals_by_hash ON replica_arrivals(hash);
    """,
    3: """
    -- Issue 11: the replicas deleted here, written in the transaction that deletes one, so
    -- that the coordinator learns it (ListDeletedReplicas, after a seq it remembers) and the
    -- source backup's replication record says so. Never reused seqs: AUTOINCREMENT.
    CREATE TABLE replica_deletions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        replica_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        source_region_id TEXT NOT NULL,
        source_backup_id TEXT NOT NULL,
        deleted_at REAL NOT NULL
    );
    """,
    4: """
    -- Issue 12: whether a chunk is named by one given backup is one seek, however many other
    -- backups name it (a replica's arriving chunks are checked against its manifest in
    -- batches at each commit, never by loading the whole manifest).
    DROP INDEX manifest_by_hash;
    CREATE INDEX manifest_by_hash ON manifest(hash, backup_id);
    """,
    5: """
    -- Issue 12: a backup's base (the newest whole backup of a disk) is a seek from the newest
    -- epoch down, not a scan of every backup's disks (CreateBackup took 1.5 ms with 10 backups
    -- in the region, 4.7 ms with 10,000). And the chunks written since an epoch are found in
    -- time with what changed, not with what the disk ever had written.
    CREATE INDEX backup_disks_by_disk ON backup_disks(disk_id, epoch);
    CREATE INDEX written_chunks_by_epoch ON written_chunks(disk_id, epoch);
    """,
    6: """
    -- Issue 12: manifests in pages of 1,024 chunk positions (page_no = chunk_index / 1024,
    -- slot = chunk_index % 1024) that backups share. A backup's disk is its list of pages
    -- (backup_pages). An incremental backup lists its base's pages for the positions nothing
    -- was written to, and makes new pages only where chunks changed: its rows, its cost and the
    -- cost of deleting it grow with what changed, not with the disk. A page is never changed
    -- once its backup is whole. A replica's pages are content-addressed (digest of the entries)
    -- so that the replicas of one disk share their unchanged pages too. A page lives while a
    -- backup lists it and its entries keep their chunks alive.
    CREATE TABLE manifest_pages (
        page_id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest BLOB
    );
    CREATE UNIQUE INDEX manifest_pages_by_digest ON manifest_pages(digest)
        WHERE digest IS NOT NULL;
    CREATE TABLE page_entries (
        page_id INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        hash BLOB NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (page_id, slot)
    ) WITHOUT ROWID;
    CREATE INDEX page_entries_by_hash ON page_entries(hash, page_id);
    CREATE TABLE backup_pages (
        backup_id TEXT NOT NULL,
        disk_index INTEGER NOT NULL,
        page_no INTEGER NOT NULL,
        page_id INTEGER NOT NULL,
        PRIMARY KEY (backup_id, disk_index, page_no)
    ) WITHOUT ROWID;
    CREATE INDEX backup_pages_by_page ON backup_pages(page_id, backup_id);
    -- The manifests of earlier versions, a page each per backup (shared from now on only by
    -- the backups taken after this migration).
    INSERT INTO backup_pages(backup_id, disk_index, page_no, page_id)
        SELECT backup_id, disk_index, page_no,
            ROW_NUMBER() OVER (ORDER BY backup_id, disk_index, page_no)
        FROM (SELECT DISTINCT backup_id, disk_index, chunk_index / 1024 AS page_no
              FROM manifest);
    INSERT INTO manifest_pages(page_id) SELECT page_id FROM backup_pages;
    INSERT INTO page_entries(page_id, slot, hash, length)
        SELECT bp.page_id, m.chunk_index % 1024, m.hash, m.length
        FROM manifest m JOIN backup_pages bp ON bp.backup_id = m.backup_id
            AND bp.disk_index = m.disk_index AND bp.page_no = m.chunk_index / 1024;
    DROP TABLE manifest;
    -- Every non-zero chunk of every disk of every backup, as before: for the questions asked
    -- of a whole backup or disk (those asked in order or by position use the pages directly).
    CREATE VIEW manifest AS
        SELECT bp.backup_id AS backup_id, bp.disk_index AS disk_index,
            bp.page_no * 1024 + e.slot AS chunk_index, e.hash AS hash, e.length AS length
        FROM backup_pages bp JOIN page_entries e ON e.page_id = bp.page_id;
    """,
    7: """
    -- Issue 13: the quotas an operator set for a project (SetProjectQuota), kept across
    -- restarts. config_quota is the cluster config's value for that quota when it was set
    -- (-1 for none): once the config says something else (edited since), the config wins and
    -- the row goes at the next start. A quota no row names is the config's.
    CREATE TABLE project_quotas (
        project_id TEXT NOT NULL,
        type TEXT NOT NULL,
        quota INTEGER NOT NULL,
        config_quota INTEGER NOT NULL,
        PRIMARY KEY (project_id, type)
    ) WITHOUT ROWID;
    """,
}
