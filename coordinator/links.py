"""The links between regions (issue 13): per ordered pair of regions (source -> target), the
bandwidth, the latency and whether the link is cut, as the operator sets them. A pair with no
link set is as fast as this machine. What a link does to a replication job is
coordinator/transit.py.

Kept in the coordinator's settings, so that a link cut stays cut across a coordinator crash: it
is the world around the regions, not a state of the process. The config file's `[[links]]`
are applied at a start when they differ from the ones applied at the start before (a changed
config file takes effect at the next start; a link set live stays set across restarts until
the config changes or the operator changes it again)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import asdict

from coordinator.store import Store
from csbs.config import LinkConfig
from csbs.errors import InvalidArgument, RegionNotFound

LINKS_SETTING = "links"
CONFIG_SETTING = "links_from_config"
MAX_LATENCY_MS = 600_000  # ten minutes a call


# The config file's link and the live one are one shape (csbs.config.LinkConfig).
Link = LinkConfig


def unlimited(source_region_id: str, target_region_id: str) -> Link:
    return Link(source_region_id, target_region_id)


class Links:
    """The links the operator set, by pair; read by every job attempt at each call it makes."""

    def __init__(self, store: Store, region_ids: Iterable[str], configured: Iterable[Link]) -> None:
        self._store = store
        self._regions = set(region_ids)
        self._lock = threading.Lock()
        links = [self.validated(link) for link in configured]
        from_config = json.dumps([asdict(link) for link in links], sort_keys=True)
        if store.setting(CONFIG_SETTING, "") != from_config:
            self._links = {link.pair: link for link in links}
            self._save()
            store.put_setting(CONFIG_SETTING, from_config)
        else:
            saved = json.loads(store.setting(LINKS_SETTING, "[]"))
            self._links = {(d["source_region_id"], d["target_region_id"]): Link(**d) for d in saved}

    def _save(self) -> None:
        self._store.put_setting(
            LINKS_SETTING, json.dumps([asdict(link) for link in self._links.values()])
        )

    def validated(self, link: Link) -> Link:
        for field, region_id in (
            ("source_region_id", link.source_region_id),
            ("target_region_id", link.target_region_id),
        ):
            if not region_id:
                raise InvalidArgument(f"link.{field} is required")
            if region_id not in self._regions:
                missing = RegionNotFound(region_id)
                missing.message = f"link.{field}: {missing.message}"
                raise missing
        if link.source_region_id == link.target_region_id:
            raise InvalidArgument(
                f"link.target_region_id: a link joins two regions; {link.source_region_id} is "
                "both ends"
            )
        if link.bandwidth_bytes_per_second < 0:
            raise InvalidArgument("link.bandwidth_bytes_per_second: 0 (unlimited) or more")
        if not 0 <= link.latency_ms <= MAX_LATENCY_MS:
            raise InvalidArgument(f"link.latency_ms: 0 to {MAX_LATENCY_MS}")
        return link

    def get(self, source_region_id: str, target_region_id: str) -> Link:
        with self._lock:
            return self._links.get(
                (source_region_id, target_region_id),
                unlimited(source_region_id, target_region_id),
            )

    def list(self) -> list[Link]:
        with self._lock:
            return sorted(self._links.values(), key=lambda link: link.pair)

    def set(self, link: Link) -> Link:
        link = self.validated(link)
        with self._lock:
            self._links[link.pair] = link
            self._save()
        return link

    def clear(self, source_region_id: str, target_region_id: str) -> bool:
        self.validated(unlimited(source_region_id, target_region_id))
        with self._lock:
            cleared = self._links.pop((source_region_id, target_region_id), None) is not None
            self._save()
        return cleared
