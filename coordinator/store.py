"""The coordinator's state: one SQLite database (WAL) in `<data_dir>/coordinator.db` holding the
replication jobs, the clean-ups that failed jobs still owe a node, and the policies and their
runs (their SQL: coordinator/policy_store.py).

One connection guarded by one lock; every logical step is one transaction. The schema carries
a version (PRAGMA user_version) and is migrated on start."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.models import (
    Cleanup,
    CleanupKind,
    JobFilter,
    JobStatus,
    Progress,
    ReplicationJob,
)
from csbs.database import Database
from csbs.node_views import ReplicationWay

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        way INTEGER NOT NULL,
        policy_id TEXT NOT NULL DEFAULT '',
        source_region_id TEXT NOT NULL,
        source_project_id TEXT NOT NULL,
        source_backup_id TEXT NOT NULL,
        target_region_id TEXT NOT NULL,
        target_project_id TEXT NOT NULL,
        replica_id TEXT NOT NULL DEFAULT '',
        replica_name TEXT NOT NULL,
        replica_description TEXT NOT NULL,
        status INTEGER NOT NULL,
        chunks_planned INTEGER NOT NULL DEFAULT 0,
        bytes_planned INTEGER NOT NULL DEFAULT 0,
        chunks_sent INTEGER NOT NULL DEFAULT 0,
        bytes_sent INTEGER NOT NULL DEFAULT 0,
        chunks_skipped INTEGER NOT NULL DEFAULT 0,
        bytes_skipped INTEGER NOT NULL DEFAULT 0,
        planned INTEGER NOT NULL DEFAULT 0,
        failure_reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        idempotency_token TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX jobs_by_token ON jobs(source_project_id, idempotency_token)
        WHERE idempotency_token != '';
    CREATE INDEX jobs_by_backup ON jobs(source_backup_id, target_region_id, seq);
    CREATE INDEX jobs_by_status ON jobs(status, seq);
    -- What a finished job still owes a node, retried until the node answers.
    CREATE TABLE cleanups (
        kind TEXT NOT NULL,
        job_id TEXT NOT NULL,
        region_id TEXT NOT NULL,
        resource_id TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, job_id)
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sequence (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )
    """,
    2: """
    -- Backup policies: the definition as versioned JSON, with the columns the scheduler and
    -- lists search by.
    CREATE TABLE policies (
        policy_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        region_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        body TEXT NOT NULL,
        next_backup_at REAL,
        next_replication_at REAL
    );
    CREATE INDEX policies_by_project ON policies(region_id, project_id, seq);
    -- A server is protected by at most one policy.
    CREATE TABLE policy_servers (
        server_id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL
    );
    CREATE INDEX policy_servers_by_policy ON policy_servers(policy_id);
    CREATE TABLE policy_runs (
        run_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        policy_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX policy_runs_by_policy ON policy_runs(policy_id, seq);
    CREATE TABLE policy_requests (
        request_id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL
    )
    """,
    3: """
    -- Issue 6: every job and policy belongs to the account that made it, and no other sees it.
    ALTER TABLE jobs ADD COLUMN account_id TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX jobs_by_account ON jobs(account_id, seq);
    ALTER TABLE policies ADD COLUMN account_id TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX policies_by_account ON policies(account_id, seq)
    """,
    4: """
    -- Issue 11: a policy's request ID answers with the policy only for the same parameters.
    ALTER TABLE policy_requests ADD COLUMN parameters TEXT NOT NULL DEFAULT ''
    """,
    5: """
    -- Issue 11: replica retention counts per server, so a job names its source's server.
    ALTER TABLE jobs ADD COLUMN source_server_id TEXT NOT NULL DEFAULT ''
    """,
    6: """
    -- Issue 11: the runs left running are found at start, and the skip rule asks the catalog.
    ALTER TABLE policy_runs ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policy_runs ADD COLUMN status INTEGER NOT NULL DEFAULT 0;
    UPDATE policy_runs SET kind = json_extract(body, '$.kind'),
        status = json_extract(body, '$.status');
    CREATE INDEX policy_runs_by_status ON policy_runs(status, policy_id, kind)
    """,
    7: """
    -- Issue 11: a clean-up refused for good is retried too (never dropped), backing off.
    ALTER TABLE cleanups ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0
    """,
    8: """
    -- Issue 11: a job's replica deleted in the target region, as that region's node said
    -- (ListDeletedReplicas), and how far each node's list of deletions has been read.
    ALTER TABLE jobs ADD COLUMN replica_deleted INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE deletion_cursors (
        region_id TEXT PRIMARY KEY,
        after_seq INTEGER NOT NULL
    )
    """,
    9: """
    -- Issue 13: when the source backup was taken, for the recovery point its replica gives.
    ALTER TABLE jobs ADD COLUMN source_backup_at REAL
    """,
    10: """
    -- Issue 14: the request ID of the call that made the job, carried on every call the job
    -- makes to the nodes (a resumed job too), so that one grep of the logs follows it.
    ALTER TABLE jobs ADD COLUMN request_id TEXT NOT NULL DEFAULT ''
    """,
}

_JOB_COLUMNS = (
    "job_id, way, policy_id, source_region_id, source_project_id, source_backup_id, "
    "target_region_id, target_project_id, replica_id, replica_name, replica_description, "
    "status, chunks_planned, bytes_planned, chunks_sent, bytes_sent, chunks_skipped, "
    "bytes_skipped, failure_reason, attempts, created_at, started_at, finished_at, updated_at, "
    "account_id, source_server_id, replica_deleted, source_backup_at"
)
# What a finished job still owes a node and why, reported with the job (issue 11).
_PENDING = (
    "(SELECT group_concat(CASE c.kind "
    "WHEN 'target' THEN CASE c.resource_id WHEN '' THEN 'removing the replica it made' "
    "ELSE 'removing its replica ' || c.resource_id END "
    "WHEN 'source' THEN 'recording the outcome on backup ' || c.resource_id "
    "ELSE 'releasing its hold on backup ' || c.resource_id END "
    "|| ' in region ' || c.region_id || CASE WHEN c.last_error = '' THEN '' "
    "ELSE ' (tried ' || c.attempts || ' times; last error: ' || c.last_error || ')' END, "
    "'; ') FROM cleanups c WHERE c.job_id = jobs.job_id)"
)
_JOB_READ = f"{_JOB_COLUMNS}, {_PENDING}"


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _job(row: Sequence[Any]) -> ReplicationJob:
    created_at = _dt(row[20])
    updated_at = _dt(row[23])
    assert created_at is not None and updated_at is not None
    return ReplicationJob(
        job_id=row[0],
        way=ReplicationWay(row[1]),
        policy_id=row[2],
        source_region_id=row[3],
        source_project_id=row[4],
        source_backup_id=row[5],
        target_region_id=row[6],
        target_project_id=row[7],
        replica_id=row[8],
        replica_name=row[9],
        replica_description=row[10],
        status=JobStatus(row[11]),
        progress=Progress(*row[12:18]),
        failure_reason=row[18],
        attempts=row[19],
        created_at=created_at,
        started_at=_dt(row[21]),
        finished_at=_dt(row[22]),
        updated_at=updated_at,
        account_id=row[24],
        source_server_id=row[25],
        replica_deleted=bool(row[26]),
        source_backup_at=_dt(row[27]),
        cleanup_pending=row[28] or "",
    )


class Store(Database):
    """The coordinator's database (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _MIGRATIONS, "coordinator")

    # -- jobs: reads -----------------------------------------------------------------------------
    def get_job(self, job_id: str, conn: sqlite3.Connection | None = None) -> ReplicationJob | None:
        if conn is None:
            with self.read() as c:
                return self.get_job(job_id, c)
        row = conn.execute(f"SELECT {_JOB_READ} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def job_by_token(
        self, conn: sqlite3.Connection, source_project_id: str, token: str
    ) -> ReplicationJob | None:
        row = conn.execute(
            f"SELECT {_JOB_READ} FROM jobs WHERE source_project_id = ? AND idempotency_token = ?",
            (source_project_id, token),
        ).fetchone()
        return None if row is None else _job(row)

    def jobs_to(
        self,
        conn: sqlite3.Connection,
        source_backup_id: str,
        target_region_id: str,
        statuses: Sequence[JobStatus],
    ) -> list[ReplicationJob]:
        """The jobs of a source backup to a target region in the given statuses (R3)."""
        marks = ", ".join("?" for _ in statuses)
        rows = conn.execute(
            f"SELECT {_JOB_READ} FROM jobs WHERE source_backup_id = ? AND "
            f"target_region_id = ? AND status IN ({marks}) ORDER BY seq",
            (source_backup_id, target_region_id, *map(int, statuses)),
        ).fetchall()
        return [_job(r) for r in rows]

    def active_job_ids(self) -> list[str]:
        with self.read() as conn:
            rows = conn.execute(
                "SELECT job_id FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                (int(JobStatus.WAITING), int(JobStatus.REPLICATING)),
            ).fetchall()
        return [r[0] for r in rows]

    def list_jobs(
        self, where: JobFilter, after_seq: int, limit: int
    ) -> tuple[list[ReplicationJob], int | None]:
        """A page of jobs in creation order, and the seq to continue after (None: last page)."""
        clauses = ["account_id = ?", "seq > ?"]
        args: list[Any] = [where.account_id, after_seq]
        for column, value in (
            ("source_backup_id", where.source_backup_id),
            ("target_region_id", where.target_region_id),
            ("source_region_id", where.source_region_id),
            ("policy_id", where.policy_id),
        ):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if where.status:
            clauses.append("status = ?")
            args.append(int(where.status))
        if where.created_after is not None:
            clauses.append("created_at > ?")
            args.append(where.created_after.timestamp())
        if where.created_before is not None:
            clauses.append("created_at < ?")
            args.append(where.created_before.timestamp())
        with self.read() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_READ}, seq FROM jobs WHERE {' AND '.join(clauses)} "
                "ORDER BY seq LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        jobs = [_job(r) for r in rows[:limit]]
        return jobs, (rows[limit - 1][-1] if len(rows) > limit else None)

    def replication_history(
        self, account_id: str, source_region_id: str, target_region_id: str, server_id: str
    ) -> list[ReplicationJob]:
        """The account's jobs that copied a server's backup (optionally of one source region,
        target region, server), in creation order: what recovery points are taken from."""
        clauses, args = ["account_id = ?", "source_server_id != ''"], [account_id]
        for column, value in (
            ("source_region_id", source_region_id),
            ("target_region_id", target_region_id),
            ("source_server_id", server_id),
        ):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        with self.read() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_READ} FROM jobs WHERE {' AND '.join(clauses)} ORDER BY seq",
                args,
            ).fetchall()
        return [_job(r) for r in rows]

    # -- jobs: writes ----------------------------------------------------------------------------
    def insert_job(
        self, conn: sqlite3.Connection, job: ReplicationJob, token: str, request_id: str = ""
    ) -> None:
        seq = self.next_seq(conn, "jobs")
        p = job.progress
        conn.execute(
            f"INSERT INTO jobs({_JOB_COLUMNS}, seq, idempotency_token, request_id) "
            f"VALUES ({', '.join('?' * 31)})",
            (
                job.job_id,
                int(job.way),
                job.policy_id,
                job.source_region_id,
                job.source_project_id,
                job.source_backup_id,
                job.target_region_id,
                job.target_project_id,
                job.replica_id,
                job.replica_name,
                job.replica_description,
                int(job.status),
                p.chunks_planned,
                p.bytes_planned,
                p.chunks_sent,
                p.bytes_sent,
                p.chunks_skipped,
                p.bytes_skipped,
                job.failure_reason,
                job.attempts,
                _ts(job.created_at),
                _ts(job.started_at),
                _ts(job.finished_at),
                _ts(job.updated_at),
                job.account_id,
                job.source_server_id,
                int(job.replica_deleted),
                _ts(job.source_backup_at),
                seq,
                token,
                request_id,
            ),
        )

    def job_request_id(self, job_id: str) -> str:
        """The request ID the job was made under ('' for a job made before issue 14)."""
        with self.read() as conn:
            row = conn.execute("SELECT request_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return "" if row is None else str(row[0])

    def job_counts(self) -> dict[JobStatus, int]:
        """How many jobs there are in each status (every account's), for the metrics."""
        with self.snapshot() as conn:
            rows = conn.execute(
                "SELECT status, COUNT(*) AS jobs FROM jobs GROUP BY status"
            ).fetchall()
        return {JobStatus(row["status"]): int(row["jobs"]) for row in rows}

    def withdraw_job(self, job_id: str, hold: tuple[str, str] | None, now: datetime) -> None:
        """Removes a job that was never answered (its source backup could not be held), with a
        clean-up that releases the hold if the node may have made it: `hold` is (region,
        backup). One transaction, so that no hold is left that nothing will release."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            if hold is not None:
                conn.execute(
                    "INSERT INTO cleanups(kind, job_id, region_id, resource_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, job_id) DO NOTHING",
                    (str(CleanupKind.HOLD), job_id, hold[0], hold[1], _ts(now)),
                )

    def source_servers(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The server each job's source backup was made from ('' if unknown: older jobs)."""
        found: dict[str, str] = {}
        with self.read() as conn:
            for job_id in job_ids:
                row = conn.execute(
                    "SELECT source_server_id FROM jobs WHERE job_id = ?", (job_id,)
                ).fetchone()
                if row is not None:
                    found[job_id] = row[0]
        return found

    def start_attempt(self, job_id: str, now: datetime) -> ReplicationJob | None:
        """The job is (again) being copied: REPLICATING, one more attempt. None for a job that
        has ended: an ended job never runs again (a second run would hold its backup anew and
        turn its source's record back to replicating)."""
        with self.transaction() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), updated_at = ? "
                "WHERE job_id = ? AND status IN (?, ?)",
                (
                    int(JobStatus.REPLICATING),
                    _ts(now),
                    _ts(now),
                    job_id,
                    int(JobStatus.WAITING),
                    int(JobStatus.REPLICATING),
                ),
            ).rowcount
            return self.get_job(job_id, conn) if updated else None

    def set_replica(self, job_id: str, replica_id: str, now: datetime) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET replica_id = ?, updated_at = ? WHERE job_id = ?",
                (replica_id, _ts(now), job_id),
            )

    def is_planned(self, job_id: str) -> bool:
        with self.read() as conn:
            row = conn.execute("SELECT planned FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def save_progress(self, job_id: str, progress: Progress, now: datetime) -> None:
        p = progress
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET chunks_planned = ?, bytes_planned = ?, chunks_sent = ?, "
                "bytes_sent = ?, chunks_skipped = ?, bytes_skipped = ?, planned = 1, "
                "updated_at = ? WHERE job_id = ?",
                (
                    p.chunks_planned,
                    p.bytes_planned,
                    p.chunks_sent,
                    p.bytes_sent,
                    p.chunks_skipped,
                    p.bytes_skipped,
                    _ts(now),
                    job_id,
                ),
            )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        reason: str,
        now: datetime,
        cleanups: Sequence[tuple[CleanupKind, str, str]] = (),
    ) -> ReplicationJob:
        """Ends the job (SUCCESS or FAILED) together with the clean-ups it still owes, given as
        (kind, region, resource), in one transaction."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, failure_reason = ?, finished_at = ?, updated_at = ? "
                "WHERE job_id = ?",
                (int(status), reason, _ts(now), _ts(now), job_id),
            )
            for kind, region_id, resource_id in cleanups:
                conn.execute(
                    "INSERT INTO cleanups(kind, job_id, region_id, resource_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, job_id) DO NOTHING",
                    (str(kind), job_id, region_id, resource_id, _ts(now)),
                )
            job = self.get_job(job_id, conn)
        assert job is not None
        return job

    # -- replicas deleted in their region ---------------------------------------------------------
    def deletion_cursor(self, region_id: str) -> int:
        """How far the region's list of deleted replicas has been read (its seq)."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT after_seq FROM deletion_cursors WHERE region_id = ?", (region_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def replicas_deleted(
        self, region_id: str, job_ids: Sequence[str], after_seq: int, now: datetime
    ) -> list[str]:
        """Marks the replicas of these jobs (made in `region_id`) deleted, owes each ended job
        a SOURCE clean-up (its source backup's record then says so; a job still running says
        so when it ends) and moves the region's cursor to `after_seq`, in one transaction.
        Returns the jobs marked."""
        marked: list[str] = []
        with self.transaction() as conn:
            for job_id in job_ids:
                row = conn.execute(
                    "SELECT source_region_id, source_backup_id, status FROM jobs WHERE "
                    "job_id = ? AND target_region_id = ? AND replica_deleted = 0",
                    (job_id, region_id),
                ).fetchone()
                if row is None:
                    continue
                conn.execute("UPDATE jobs SET replica_deleted = 1 WHERE job_id = ?", (job_id,))
                marked.append(job_id)
                if JobStatus(row[2]).finished:
                    conn.execute(
                        "INSERT INTO cleanups(kind, job_id, region_id, resource_id, created_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, job_id) DO NOTHING",
                        (str(CleanupKind.SOURCE), job_id, row[0], row[1], _ts(now)),
                    )
            conn.execute(
                "INSERT INTO deletion_cursors(region_id, after_seq) VALUES (?, ?) "
                "ON CONFLICT(region_id) DO UPDATE SET after_seq = excluded.after_seq",
                (region_id, after_seq),
            )
        return marked

    # -- clean-ups -------------------------------------------------------------------------------
    def cleanups(self, due_at: float | None = None) -> list[Cleanup]:
        """The clean-ups still owed (those due at `due_at`, a time.time(), if given)."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT kind, job_id, region_id, resource_id, attempts, last_error "
                "FROM cleanups WHERE next_attempt_at <= ? ORDER BY created_at",
                (float("inf") if due_at is None else due_at,),
            ).fetchall()
        return [Cleanup(CleanupKind(r[0]), *r[1:]) for r in rows]

    def cleanup_done(self, kind: CleanupKind, job_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM cleanups WHERE kind = ? AND job_id = ?", (str(kind), job_id))

    def cleanup_failed(
        self, kind: CleanupKind, job_id: str, error: str, next_attempt_at: float = 0.0
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE cleanups SET attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = ? WHERE kind = ? AND job_id = ?",
                (error, next_attempt_at, str(kind), job_id),
            )
