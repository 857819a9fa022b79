"""Issue 12: a node reads at most a few WriteDisk streams at once (csbs.memory.StreamSlots), so
its memory does not grow with the number of concurrent writers; the others wait their turn, first
come first served, and a sender that stalls while holding a slot never stops the others."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from csbs.memory import StreamSlots
from csbs.v1 import region_node_pb2 as pb
from tests.harness import Cluster
from tests.node_helpers import MIB, make_server, node, read, seeded_bytes, write

REGION = "cn-north-4"
END = object()

pytestmark = pytest.mark.timeout(120)


def test_streams_beyond_the_slots_wait_their_turn_in_order_and_all_complete() -> None:
    slots = StreamSlots(slots=2, stall_seconds=60.0)
    feeds = [queue.Queue[object]() for _ in range(5)]
    reading: list[int] = []
    most = 0
    order: list[int] = []
    lock = threading.Lock()

    def messages(k: int) -> Iterator[object]:
        while (item := feeds[k].get()) is not END:
            yield item

    def stream(k: int) -> int:
        nonlocal most
        got = 0
        for _ in slots.each(messages(k)):
            with lock:
                if k not in reading:
                    reading.append(k)
                    order.append(k)
                most = max(most, len(reading))
            got += 1
        with lock:
            if k in reading:
                reading.remove(k)
        return got

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = []
        for k in range(5):  # one after the other, so that their order in the queue is known
            futures.append(pool.submit(stream, k))
            feeds[k].put(b"first")
            threading.Event().wait(0.05)
        for k in range(5):
            feeds[k].put(b"second")
            feeds[k].put(END)
        assert [f.result(timeout=30) for f in futures] == [2] * 5
    assert most == 2
    assert order == [0, 1, 2, 3, 4]
    assert slots.went_without == 0


def test_a_stalled_writer_holding_a_slot_never_stops_the_other_writers(cluster: Cluster) -> None:
    stub = node(cluster.channel(REGION))
    size_mib = 8
    stalled = [make_server(stub, [size_mib]) for _ in range(2)]
    other = make_server(stub, [size_mib])
    go_on = threading.Event()
    first_bytes = seeded_bytes(61, MIB)

    def stalls(server_id: str) -> Iterator[pb.WriteDiskRequest]:
        yield pb.WriteDiskRequest(server_id=server_id, offset=0, data=first_bytes)
        go_on.wait(60)  # the sender stalls holding its slot
        yield pb.WriteDiskRequest(server_id=server_id, offset=MIB, data=first_bytes)

    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(stub.WriteDisk, stalls(s.server_id), timeout=90) for s in stalled]
        threading.Event().wait(0.5)  # both streams are being read, each holding a slot
        data = seeded_bytes(62, size_mib * MIB)
        # Both slots are held by stalled senders: this write goes on once they have not moved
        # for the node's stall time; were it to wait for them, it would time out here.
        assert write(stub, other.server_id, 0, 0, data) == len(data)
        assert not any(f.done() for f in held)  # the stalled ones are still stalled
        go_on.set()
        assert [f.result(timeout=60).bytes_written for f in held] == [2 * MIB, 2 * MIB]
    assert read(stub, other.server_id, 0, 0, len(data)) == data
    for s in stalled:
        assert read(stub, s.server_id, 0, 0, 2 * MIB) == first_bytes * 2
