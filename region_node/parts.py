"""What every layer of one region node shares: its config and clock, the catalog, the chunk
store, the disk files, the reserved room, the notifier watchers wait on, the progress of running
work, and the two thread pools. Built once by region_node.node; plain Python, no gRPC."""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from csbs.clock import Clock
from csbs.errors import ServerNotFound, StorageFull
from csbs.notifier import Notifier
from csbs.paging import PageTokens
from csbs.request_ids import CarryingExecutor
from csbs.tally import Tally
from region_node.catalog import Catalog
from region_node.catalog import servers as server_rows
from region_node.config import NodeConfig
from region_node.storage.capacity import CapacityReached
from region_node.storage.chunk_store import ChunkStore, chunk_hash
from region_node.storage.disks import DiskState
from region_node.storage.fileio import out_of_space
from region_node.storage.space import SpaceReserve

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_END = object()


def ts(value: datetime) -> float:
    return value.timestamp()


def dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Progress:
    """Bytes done of bytes in all, of work running in the background (a backup, a fill)."""

    total: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n


class NodeParts:
    def __init__(self, config: NodeConfig, clock: Clock, catalog: Catalog) -> None:
        self.config = config
        self.clock = clock
        self.region_id = config.region_id
        self.chunk_size = config.chunk_size
        self.catalog = catalog
        self.store = ChunkStore(config.data_dir / "chunks", catalog)
        self.disk_dir = config.data_dir / "disks"
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        self.reserve = SpaceReserve(config.data_dir / "reserved-room")
        self.notifier = Notifier()
        self.tokens = PageTokens(
            catalog.setting("page_token_secret", secrets.token_hex(32)).encode()
        )
        self.progress: dict[str, Progress] = {}  # by backup or server ID, while work runs
        self.closing = threading.Event()
        # Background work (a backup, a fill) goes on under the request ID that started it.
        self.jobs = CarryingExecutor(max_workers=16, thread_name_prefix="job")
        self.tally = Tally()  # what the node's metrics count (csbs.metrics)
        self.workers = ThreadPoolExecutor(
            max_workers=config.workers * 4, thread_name_prefix="chunk"
        )
        self._disks: dict[str, DiskState] = {}
        self._disks_lock = threading.Lock()  # a leaf: nothing is taken while holding it
        self._local = threading.local()
        self._zero_hash = {self.chunk_size: chunk_hash(bytes(self.chunk_size))}

    def now(self) -> float:
        return ts(self.clock.now())

    # -- disks --------------------------------------------------------------------------------
    def disk(self, disk_id: str) -> DiskState:
        """The disk's state, loaded from the catalog at its first use."""
        with self._disks_lock:
            state = self._disks.get(disk_id)
        if state is not None:
            return state
        with self.catalog.read() as conn:
            found = server_rows.disk_size_and_epoch(conn, disk_id)
        if found is None:
            raise ServerNotFound(disk_id)
        fresh = self.new_disk(disk_id, *found)
        with self._disks_lock:
            return self._disks.setdefault(disk_id, fresh)

    def new_disk(self, disk_id: str, size_bytes: int, epoch: int = 1) -> DiskState:
        return DiskState(disk_id, self.disk_dir / f"{disk_id}.disk", size_bytes, epoch)

    def add_disks(self, states: Iterable[DiskState]) -> None:
        with self._disks_lock:
            for state in states:
                self._disks[state.disk_id] = state

    def forget_disk(self, disk_id: str) -> DiskState | None:
        with self._disks_lock:
            return self._disks.pop(disk_id, None)

    def close_disks(self) -> None:
        with self._disks_lock:
            for disk in self._disks.values():
                disk.close()

    # -- chunks -------------------------------------------------------------------------------
    def buffer(self) -> bytearray:
        """One chunk-sized buffer per thread, reused (new memory is the cost on this machine)."""
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(self.chunk_size)
        return buf

    def zero_hash_for(self, length: int) -> bytes:
        digest = self._zero_hash.get(length)
        if digest is None:
            digest = self._zero_hash[length] = chunk_hash(bytes(length))
        return digest

    def chunk_length(self, size_bytes: int, chunk_index: int) -> int:
        return min(self.chunk_size, size_bytes - chunk_index * self.chunk_size)

    def chunks_in(self, size_bytes: int) -> int:
        return -(-size_bytes // self.chunk_size)

    # -- running work -------------------------------------------------------------------------
    def parallel(self, items: Iterable[T], work: Callable[[T], None], threads: int = 0) -> None:
        """Runs `work` over `items` on `threads` chunk workers (default: the configured number);
        the first error stops the rest."""
        iterator = iter(items)
        lock = threading.Lock()
        errors: list[BaseException] = []

        def run() -> None:
            while not errors:
                with lock:
                    item = next(iterator, _END)
                if item is _END:
                    return
                try:
                    work(item)  # type: ignore[arg-type]
                except BaseException as exc:
                    errors.append(exc)
                    return

        runners = [self.workers.submit(run) for _ in range(threads or self.config.workers)]
        for runner in runners:
            runner.result()
        if errors:
            raise errors[0]

    def settle(self, step: Callable[[], None], what: str) -> None:
        """Runs a step that ends work (marks it failed or done, removes what it left): it is
        never dropped. On a full filesystem the reserved room is given back; any other failure
        is retried with backoff until it succeeds or the node stops (the next start then
        finishes the work: region_node.node's recovery)."""
        delay = 0.1
        while True:
            try:
                step()
                return
            except Exception as exc:
                if out_of_space(exc) and self.reserve.release():
                    continue
                if self.closing.is_set():
                    log.error("%s left to the next start: %s", what, exc)
                    return
                log.warning("%s failed, trying again in %.1fs: %s", what, delay, exc)
            self.closing.wait(delay)
            delay = min(delay * 2, 5.0)


def space_refusal(region_id: str, what: str, exc: BaseException) -> StorageFull:
    """StorageFull for a write that found no room: the filesystem's, or the region's capacity
    (which the message then names, with its use)."""
    return StorageFull(region_id, what, exc.why if isinstance(exc, CapacityReached) else "")


def needs_space(what: str) -> Callable[[F], F]:
    """A domain call that writes: a full filesystem (or a region at its capacity) becomes
    StorageFull naming the region and `what` did not fit (RESOURCE_EXHAUSTED), never an
    internal error. For methods of objects with a `_parts` (NodeParts) attribute."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            parts: NodeParts = self._parts
            parts.reserve.ensure()
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if out_of_space(exc):
                    raise space_refusal(parts.region_id, what, exc) from exc
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def operator_control(what: str) -> Callable[[F], F]:
    """An operator's control of the region (its outage, capacity, quotas: issue 13): it works
    on a full filesystem too, using the reserved room, so that a region full of data can still
    be put out, brought back or given more room. Only when even that room is gone is it
    StorageFull naming `what`."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            parts: NodeParts = self._parts
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not out_of_space(exc):
                    raise
                if not parts.reserve.release():
                    raise space_refusal(parts.region_id, what, exc) from exc
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if out_of_space(exc):
                    raise space_refusal(parts.region_id, what, exc) from exc
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def makes_room(method: F) -> F:
    """A call that frees space (a deletion): on a full filesystem it gives the reserved room
    back and tries once more, so a user can always make room through the API."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        parts: NodeParts = self._parts
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not out_of_space(exc):
                raise
            if not parts.reserve.release():
                raise StorageFull(parts.region_id, "the deletion's record") from exc
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
