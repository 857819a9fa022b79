"""Capacity and quotas (issue 13): the region's storage capacity (region_node.storage.capacity
enforces it on every chunk written) and its projects' quotas, as the real service has them
(`GET /v1/{project_id}/quotas`):

- `backups`: the backups and replicas a project holds in this region, in any status. One in
  error counts too, as in Cinder: it is listed, and held, until someone deletes it.
- `backup_capacity`: the sum of their sizes, a backup's size being its disks' sizes (what
  `Backup.size_bytes` shows). Known when a backup starts, so a backup is refused before it
  takes anything (its size is its reservation), and a replica counts what its source counts;
  stored bytes would not do: they are known only once it ends and, deduplicated, depend on
  which backup came first. Shown in GB of 2^30 bytes rounded up (any backup shows as at least
  1 GB); checked in bytes.

A backup or replica that would take its project beyond a quota is refused, RESOURCE_EXHAUSTED
naming the quota, its limit and its use, checked in the transaction that inserts it, so two
calls racing for the last slot cannot both pass. Deleting one gives its share back at once.

Which value holds: the cluster config's gives the start values; an operator call changes one
live, and what it set is kept in the catalog across restarts and wins over the config until
the config's value for it is edited (whichever was changed last wins: a scenario edited in the
config takes effect at the next start; a live change survives a restart)."""

from __future__ import annotations

import sqlite3

from csbs.errors import InvalidArgument, ProjectNotFound, QuotaExceeded, bytes_text
from region_node.catalog import limits as limit_rows
from region_node.models import QuotaResource, Quotas, RegionCapacity
from region_node.parts import NodeParts, operator_control
from region_node.services.region import RegionService

BACKUPS = "backups"
BACKUP_CAPACITY = "backup_capacity"
QUOTA_TYPES = (BACKUPS, BACKUP_CAPACITY)
UNLIMITED = -1
GB = 1 << 30
MAX_CAPACITY = (1 << 63) - 1  # what SQLite keeps in an integer
MAX_QUOTA = {BACKUPS: MAX_CAPACITY, BACKUP_CAPACITY: MAX_CAPACITY // GB}


def gb_rounded_up(n: int) -> int:
    return -(-n // GB)


class LimitService:
    def __init__(self, parts: NodeParts, region: RegionService) -> None:
        self._parts = parts
        self._region = region
        config = parts.config
        self._config_quotas: dict[tuple[str, str], int] = {}
        for q in config.quotas:
            self._config_quotas[(q.project_id, BACKUPS)] = q.backups
            self._config_quotas[(q.project_id, BACKUP_CAPACITY)] = q.backup_capacity_gb
        self._set_by_operator = False
        self._apply_config()

    def _apply_config(self) -> None:
        """At start: what an operator set stays, unless the config's value for it was edited
        since (then the config's holds, and the operator's is dropped)."""
        parts = self._parts
        config_capacity = parts.config.capacity_bytes
        capacity = config_capacity
        with parts.catalog.transaction() as conn:
            stored = limit_rows.operator_capacity(conn)
            if stored is not None and stored[1] == config_capacity:
                capacity, self._set_by_operator = stored[0], True
            elif stored is not None:
                limit_rows.drop_operator_capacity(conn)
            for project_id, quota_type, _, config_then in limit_rows.operator_quotas(conn):
                if config_then != self._config_quota(project_id, quota_type):
                    limit_rows.drop_operator_quota(conn, project_id, quota_type)
        parts.store.capacity.set_limit(capacity)

    def _config_quota(self, project_id: str, quota_type: str) -> int:
        return self._config_quotas.get((project_id, quota_type), UNLIMITED)

    # -- the region's capacity ----------------------------------------------------------------
    def capacity(self) -> RegionCapacity:
        limit, used = self._parts.store.capacity.usage()
        return RegionCapacity(self._parts.region_id, limit, used, self._set_by_operator)

    @operator_control("the region's capacity")
    def set_capacity(self, capacity: int) -> RegionCapacity:
        """The bytes the region's chunk store may hold from now on (0: unlimited). Lower than
        what it holds: nothing held is touched, and every new chunk is refused until enough is
        deleted."""
        if not 0 <= capacity <= MAX_CAPACITY:
            raise InvalidArgument(f"capacity_bytes: 0 (unlimited) to {MAX_CAPACITY}")
        parts = self._parts
        with parts.catalog.transaction() as conn:
            limit_rows.set_operator_capacity(conn, capacity, parts.config.capacity_bytes)
        parts.store.capacity.set_limit(capacity)
        self._set_by_operator = True
        return self.capacity()

    # -- projects' quotas ---------------------------------------------------------------------
    def quotas(self, project_id: str) -> Quotas:
        """A project's quotas and what it uses of them (`project_id` already authorized)."""
        with self._parts.catalog.read() as conn:
            count, size = limit_rows.usage(conn, project_id)
            return Quotas(
                project_id,
                (
                    QuotaResource(BACKUPS, self._quota(conn, project_id, BACKUPS), count, ""),
                    QuotaResource(
                        BACKUP_CAPACITY,
                        self._quota(conn, project_id, BACKUP_CAPACITY),
                        gb_rounded_up(size),
                        "GB",
                    ),
                ),
            )

    @operator_control("the quota")
    def set_quota(self, project_id: str, quota_type: str, quota: int) -> Quotas:
        """An operator sets one quota of a project of this region (-1: unlimited)."""
        if not project_id:
            raise InvalidArgument("project_id: required (a project of this region)")
        if project_id not in self._region.projects:
            raise ProjectNotFound(project_id)
        if quota_type not in QUOTA_TYPES:
            raise InvalidArgument(f"type: {quota_type!r} is not a quota; one of {QUOTA_TYPES}")
        if not UNLIMITED <= quota <= MAX_QUOTA[quota_type]:
            raise InvalidArgument(
                f"quota: -1 (unlimited) or 0 to {MAX_QUOTA[quota_type]}, not {quota}"
            )
        with self._parts.catalog.transaction() as conn:
            limit_rows.set_operator_quota(
                conn, project_id, quota_type, quota, self._config_quota(project_id, quota_type)
            )
        return self.quotas(project_id)

    def _quota(self, conn: sqlite3.Connection, project_id: str, quota_type: str) -> int:
        found = limit_rows.operator_quota(conn, project_id, quota_type)
        return self._config_quota(project_id, quota_type) if found is None else found

    def admit(self, conn: sqlite3.Connection, project_id: str, size_bytes: int, what: str) -> None:
        """Inside the transaction that inserts a backup or replica of `size_bytes` (its disks'
        sizes) into the project: QuotaExceeded if it would take the project beyond a quota.
        `what` names it in the message ("the backup", "the replica")."""
        backups = self._quota(conn, project_id, BACKUPS)
        capacity = self._quota(conn, project_id, BACKUP_CAPACITY)
        if backups == UNLIMITED and capacity == UNLIMITED:
            return  # nothing to count
        count, size = limit_rows.usage(conn, project_id)
        if backups != UNLIMITED and count + 1 > backups:
            raise QuotaExceeded(project_id, BACKUPS, str(backups), str(count), "")
        if capacity != UNLIMITED and size + size_bytes > capacity * GB:
            raise QuotaExceeded(
                project_id,
                BACKUP_CAPACITY,
                f"{capacity} GB",
                f"{gb_rounded_up(size)} GB ({size} bytes)",
                f", and {what}'s disks take {bytes_text(size_bytes)} more",
            )
