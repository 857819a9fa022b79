"""The region itself: what it is and advertises (R5), whose projects it holds and which of them
a call may act in (issue 6), and its clock in simulated mode."""

from __future__ import annotations

from datetime import datetime

from csbs.clock import Clock, SimulatedClock
from csbs.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProjectNotFound,
)
from region_node.models import Project, RegionInfo
from region_node.parts import NodeParts, needs_space


class RegionService:
    def __init__(self, parts: NodeParts) -> None:
        self._parts = parts
        config = parts.config
        self._projects = {
            p.project_id: Project(p.project_id, p.name, p.account_id, p.main)
            for p in config.projects
        }
        self._accepts_replication = (
            parts.catalog.setting("accepts_replication", "1" if config.accepts_replication else "0")
            == "1"
        )

    @property
    def projects(self) -> dict[str, Project]:
        return self._projects

    @property
    def accepts_replication(self) -> bool:
        return self._accepts_replication

    def info(self, account_id: str = "") -> RegionInfo:
        """The region as `account_id` sees it: only that account's projects (issue 6); every
        project when the call acts for no account (the coordinator's own calls)."""
        config = self._parts.config
        return RegionInfo(
            region_id=config.region_id,
            display_name=config.display_name,
            accepts_replication=self._accepts_replication,
            projects=tuple(
                p for p in self._projects.values() if not account_id or p.account_id == account_id
            ),
            chunk_size=self._parts.chunk_size,
        )

    @needs_space("the replication capability")
    def set_replication_capability(self, accepts: bool) -> RegionInfo:
        """R5: the region's own word on whether it accepts replication, advertised at once."""
        self._parts.catalog.put_setting("accepts_replication", "1" if accepts else "0")
        self._accepts_replication = accepts
        return self.info()

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

    def account_projects(self, project_id: str) -> list[str]:
        """`project_id` first, then every other project of its account here."""
        owner = self._projects.get(project_id)
        return [project_id] + [
            p.project_id
            for p in self._projects.values()
            if owner is not None and p.account_id == owner.account_id and p is not owner
        ]

    @needs_space("the clock's instant")
    def set_clock(self, instant: datetime) -> datetime:
        """Simulated mode: the coordinator moves this node's clock (never backwards); the
        instant is persisted, so a restarted node starts where it was."""
        clock: Clock = self._parts.clock
        if not isinstance(clock, SimulatedClock):
            raise FailedPrecondition(
                "the cluster clock is not simulated; it follows the wall clock"
            )
        now = clock.set(instant)
        self._parts.catalog.put_setting("clock_now", now.isoformat())
        return now
