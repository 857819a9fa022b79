"""A region outage (issue 13): the operator takes the region down for its users and for the
coordinator, and brings it back; what an outage refuses is the gRPC edge's
(region_node.outage_gate), what it is and how it is kept is here.

The state is one versioned setting of the catalog, written before it is shown, so a node
killed during an outage starts out again, until the operator brings it back. A region the
cluster config lists in `[faults] outages` is put out at every start (the config describes the
scenario a cluster starts in); bringing it back lasts until the next start."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime

from csbs.errors import InvalidArgument, RegionOut
from region_node.models import RegionOutage
from region_node.parts import NodeParts, operator_control

log = logging.getLogger(__name__)

SETTING = "region_outage"
FORMAT_VERSION = 1
MAX_REASON_CHARS = 255
CONFIG_REASON = "the cluster config lists this region in [faults] outages"

Listener = Callable[[RegionOutage], None]


class OutageService:
    """The region's outage state. Its lock is taken before the catalog's (for its setting);
    listeners are called under it and may take only leaf locks (the health servicer's)."""

    def __init__(self, parts: NodeParts, starts_out: bool) -> None:
        self._parts = parts
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._state = self._load()
        if starts_out and not self._state.out:
            self._state = self._save(True, CONFIG_REASON, parts.clock.now())
        if self._state.out:
            log.warning("region %s starts out: %s", parts.region_id, self._state.reason)

    @property
    def state(self) -> RegionOutage:
        return self._state

    @property
    def out(self) -> bool:
        return self._state.out

    def refusal(self) -> RegionOut:
        """What a call refused because of the outage is told."""
        return RegionOut(self._parts.region_id, self._state.reason)

    def on_change(self, listener: Listener) -> None:
        """Calls `listener(state)` after every change (e.g. health, at the gRPC edge)."""
        self._listeners.append(listener)

    @operator_control("the region's outage state")
    def set(self, out: bool, reason: str) -> RegionOutage:
        """Puts the region out, or brings it back. Putting an out region out again changes only
        its reason (it stays out since it went out); bringing back a region in service does
        nothing."""
        reason = reason.strip()
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidArgument(f"reason: at most {MAX_REASON_CHARS} characters")
        if reason and not out:
            raise InvalidArgument("reason: only an outage has a reason (out is false)")
        with self._lock:
            current = self._state
            if out == current.out and reason == current.reason:
                return current
            since = self._parts.clock.now()
            if out and current.out and current.since is not None:
                since = current.since  # out since it went out, whatever the reason says now
            self._state = state = self._save(out, reason, since)
            # Under the lock, so that what listeners show follows the changes in their order.
            for listener in self._listeners:
                listener(state)
        log.warning(
            "region %s %s",
            state.region_id,
            f"is out: {reason or 'no reason'}" if out else "is back",
        )
        return state

    def _load(self) -> RegionOutage:
        never = json.dumps({"version": FORMAT_VERSION, "out": False, "reason": "", "since": None})
        stored = json.loads(self._parts.catalog.setting(SETTING, never))
        if stored.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"setting {SETTING!r} has format version {stored.get('version')!r}; this node "
                f"reads version {FORMAT_VERSION}"
            )
        since = stored["since"]
        return RegionOutage(
            region_id=self._parts.region_id,
            out=bool(stored["out"]),
            reason=str(stored["reason"]),
            since=None if since is None else datetime.fromisoformat(since),
        )

    def _save(self, out: bool, reason: str, since: datetime) -> RegionOutage:
        value = {
            "version": FORMAT_VERSION,
            "out": out,
            "reason": reason,
            "since": since.isoformat(),
        }
        self._parts.catalog.put_setting(SETTING, json.dumps(value))
        return RegionOutage(self._parts.region_id, out, reason, since)
