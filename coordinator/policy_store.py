"""All the SQL of the policies and their runs, over the coordinator's database
(coordinator/store.py holds the schema); rows are read by column name.

What it keeps:
- `policies`: a policy's definition as versioned JSON (coordinator/policy_models.py) with the
  columns lists and the scheduler search by, among them the next due time of each kind of run;
- `policy_servers`: which policy protects a server (a server is in at most one: add_servers);
- `policy_requests`: the policy a request ID made, with the parameters it was made with;
- `policy_runs`: every run, as versioned JSON, with its kind and status as columns (the skip
  rule and the recovery at start look for runs RUNNING).
A method that takes `conn` works inside the caller's transaction, so that a check and the
writes that depend on it are atomic; the others open their own."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from coordinator.errors import ServerInAnotherPolicy
from coordinator.policy_models import (
    KIND_BACKUP,
    KIND_REPLICATION,
    RUNNING,
    Policy,
    PolicyRun,
    policy_body,
    policy_from_row,
    run_body,
    run_from_body,
)
from coordinator.store import Store

# The column holding the next due time of each kind of run (names from here, never input).
_NEXT_AT = {KIND_BACKUP: "next_backup_at", KIND_REPLICATION: "next_replication_at"}
_POLICY_COLUMNS = "body, next_backup_at, next_replication_at"
RUNS_BATCH = 64  # runs read from the database at once while a page is filled


def _rows(conn: sqlite3.Connection, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, args).fetchall()


def _row(conn: sqlite3.Connection, sql: str, args: Sequence[object] = ()) -> sqlite3.Row | None:
    rows = _rows(conn, sql, args)
    return rows[0] if rows else None


def _policy(row: sqlite3.Row) -> Policy:
    return policy_from_row(row["body"], row["next_backup_at"], row["next_replication_at"])


class PolicyStore:
    """The policies' tables (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self._db = store

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db.transaction() as conn:
            yield conn

    # -- policies: reads --------------------------------------------------------------------------
    def load(self, policy_id: str, conn: sqlite3.Connection | None = None) -> Policy | None:
        """A policy, whoever's it is, or None."""
        if conn is None:
            with self._db.read() as c:
                return self.load(policy_id, c)
        row = _row(
            conn, f"SELECT {_POLICY_COLUMNS} FROM policies WHERE policy_id = ?", (policy_id,)
        )
        return None if row is None else _policy(row)

    def page(
        self, account_id: str, region_id: str, project_id: str, after: int, limit: int
    ) -> tuple[list[Policy], int | None]:
        """A page of the account's policies (in a region and project if given) in creation
        order, and the seq to continue after (None: last page)."""
        where, args = ["account_id = ?", "seq > ?"], [account_id, after]
        for column, value in (("region_id", region_id), ("project_id", project_id)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        with self._db.read() as conn:
            rows = _rows(
                conn,
                f"SELECT {_POLICY_COLUMNS}, seq FROM policies WHERE {' AND '.join(where)} "
                "ORDER BY seq LIMIT ?",
                (*args, limit + 1),
            )
        items = [_policy(r) for r in rows[:limit]]
        return items, (rows[limit - 1]["seq"] if len(rows) > limit else None)

    def request(
        self, request_key: str, conn: sqlite3.Connection | None = None
    ) -> tuple[str, str] | None:
        """The policy a request ID made and the parameters it was made with ('' if older)."""
        if conn is None:
            with self._db.read() as c:
                return self.request(request_key, c)
        row = _row(
            conn,
            "SELECT policy_id, parameters FROM policy_requests WHERE request_id = ?",
            (request_key,),
        )
        return None if row is None else (row["policy_id"], row["parameters"])

    def protector(self, server_id: str, conn: sqlite3.Connection | None = None) -> str | None:
        """The policy protecting a server, if any."""
        if conn is None:
            with self._db.read() as c:
                return self.protector(server_id, c)
        row = _row(conn, "SELECT policy_id FROM policy_servers WHERE server_id = ?", (server_id,))
        return None if row is None else str(row["policy_id"])

    def due_times(self) -> list[tuple[str, float | None, float | None]]:
        """Every policy's next due times: (policy, next backup run, next replication run)."""
        with self._db.read() as conn:
            rows = _rows(
                conn, "SELECT policy_id, next_backup_at, next_replication_at FROM policies"
            )
        return [(r["policy_id"], r["next_backup_at"], r["next_replication_at"]) for r in rows]

    def next_at(self, conn: sqlite3.Connection, policy_id: str, kind: int) -> float | None:
        """The time the policy's next run of this kind falls due (None: never)."""
        row = _row(
            conn, f"SELECT {_NEXT_AT[kind]} AS at FROM policies WHERE policy_id = ?", (policy_id,)
        )
        return None if row is None else row["at"]

    # -- policies: writes -------------------------------------------------------------------------
    def insert(
        self,
        conn: sqlite3.Connection,
        policy: Policy,
        times: tuple[float | None, float | None],
        request_key: str,
        parameters: str,
    ) -> None:
        """A new policy, its servers, and the request ID that made it (if any)."""
        conn.execute(
            "INSERT INTO policies(policy_id, seq, region_id, project_id, body, "
            "next_backup_at, next_replication_at, account_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                policy.policy_id,
                self._db.next_seq(conn, "policies"),
                policy.region_id,
                policy.project_id,
                policy_body(policy),
                *times,
                policy.account_id,
            ),
        )
        self.add_servers(conn, policy.policy_id, policy.server_ids)
        if request_key:
            conn.execute(
                "INSERT INTO policy_requests(request_id, policy_id, parameters) VALUES (?, ?, ?)",
                (request_key, policy.policy_id, parameters),
            )

    def update(
        self,
        conn: sqlite3.Connection,
        policy: Policy,
        times: tuple[float | None, float | None] | None = None,
    ) -> None:
        """A policy's new definition, and its next due times if given."""
        if times is None:
            conn.execute(
                "UPDATE policies SET body = ? WHERE policy_id = ?",
                (policy_body(policy), policy.policy_id),
            )
            return
        conn.execute(
            "UPDATE policies SET body = ?, next_backup_at = ?, next_replication_at = ? "
            "WHERE policy_id = ?",
            (policy_body(policy), *times, policy.policy_id),
        )

    def move_next_at(
        self, conn: sqlite3.Connection, policy_id: str, kind: int, at: float | None
    ) -> None:
        conn.execute(
            f"UPDATE policies SET {_NEXT_AT[kind]} = ? WHERE policy_id = ?", (at, policy_id)
        )

    def add_servers(
        self, conn: sqlite3.Connection, policy_id: str, server_ids: Sequence[str]
    ) -> None:
        """Protects these servers with the policy. The one place "a server is in at most one
        policy" is checked: in the transaction that adds them, so two policies never both take
        a server."""
        for server_id in server_ids:
            owner = self.protector(server_id, conn)
            if owner is not None:
                raise ServerInAnotherPolicy(server_id, owner)
        conn.executemany(
            "INSERT INTO policy_servers(server_id, policy_id) VALUES (?, ?)",
            [(s, policy_id) for s in server_ids],
        )

    def remove_servers(self, conn: sqlite3.Connection, server_ids: Sequence[str]) -> None:
        conn.executemany(
            "DELETE FROM policy_servers WHERE server_id = ?", [(s,) for s in server_ids]
        )

    def delete(self, policy_id: str) -> None:
        """A policy, its servers and its request ID; its runs stay."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM policies WHERE policy_id = ?", (policy_id,))
            conn.execute("DELETE FROM policy_servers WHERE policy_id = ?", (policy_id,))
            conn.execute("DELETE FROM policy_requests WHERE policy_id = ?", (policy_id,))

    # -- runs -------------------------------------------------------------------------------------
    def save_run(self, run: PolicyRun, conn: sqlite3.Connection | None = None) -> None:
        """Records a run, or its new state."""
        if conn is None:
            with self._db.transaction() as c:
                self.save_run(run, c)
            return
        exists = _row(conn, "SELECT 1 FROM policy_runs WHERE run_id = ?", (run.run_id,))
        if exists:
            conn.execute(
                "UPDATE policy_runs SET body = ?, status = ? WHERE run_id = ?",
                (run_body(run), run.status, run.run_id),
            )
        else:
            conn.execute(
                "INSERT INTO policy_runs(run_id, seq, policy_id, body, kind, status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    self._db.next_seq(conn, "policy_runs"),
                    run.policy_id,
                    run_body(run),
                    run.kind,
                    run.status,
                ),
            )

    @staticmethod
    def going(conn: sqlite3.Connection, policy_id: str, kind: int) -> str | None:
        """The run of this policy and kind still going, if any (the skip rule)."""
        row = _row(
            conn,
            "SELECT run_id FROM policy_runs WHERE status = ? AND policy_id = ? AND kind = ? "
            "LIMIT 1",
            (RUNNING, policy_id, kind),
        )
        return None if row is None else str(row["run_id"])

    def run_counts(self) -> dict[tuple[int, int], int]:
        """How many runs there are of each (kind, status), for the metrics."""
        with self._db.read() as conn:
            rows = _rows(
                conn,
                "SELECT kind, status, COUNT(*) AS runs FROM policy_runs GROUP BY kind, status",
            )
        return {(r["kind"], r["status"]): int(r["runs"]) for r in rows}

    def running(self) -> list[PolicyRun]:
        """Every run left RUNNING, oldest first (what the recovery at start ends)."""
        with self._db.read() as conn:
            rows = _rows(
                conn, "SELECT body FROM policy_runs WHERE status = ? ORDER BY seq", (RUNNING,)
            )
        return [run_from_body(r["body"]) for r in rows]

    def runs_page(
        self,
        policy_id: str,
        after: int,
        limit: int,
        weigh: Callable[[PolicyRun], int],
        budget: int,
    ) -> tuple[list[PolicyRun], int | None]:
        """A page of a policy's runs in the order they were recorded: at most `limit` runs,
        and no more than `budget` bytes of them as `weigh` counts a run (at least one run,
        whatever it weighs); and the seq of the last run in it to continue after (None: the
        last page). Rows are read a few at a time, so that no more than a page is held and
        the database is not held while runs are weighed."""
        items: list[PolicyRun] = []
        used = 0
        last_seq = after
        batch = min(RUNS_BATCH, limit + 1)
        while True:
            with self._db.read() as conn:
                rows = _rows(
                    conn,
                    "SELECT body, seq FROM policy_runs WHERE policy_id = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (policy_id, last_seq, batch),
                )
            for row in rows:
                run = run_from_body(row["body"])
                weight = weigh(run)
                if items and (len(items) == limit or used + weight > budget):
                    return items, last_seq  # another run follows: the page ends before it
                items.append(run)
                used += weight
                last_seq = row["seq"]
            if len(rows) < batch:
                return items, None
