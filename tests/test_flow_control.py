"""Issue 6, bad input never hurts: a client that opens many streams and stops reading does not
make a node run out of memory. gRPC's flow control holds each stream to about one message in
flight, the node lets one account hold at most STREAMS_PER_ACCOUNT streams at once (the rest are
RESOURCE_EXHAUSTED at once), and other clients, and the same account's unary calls, are still
served. Cancelling the streams gives the slots back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc

from csbs.auth import STREAMS_PER_ACCOUNT
from csbs.v1 import region_node_pb2 as pb
from tests.harness import DEFAULT_ACCOUNT, SECOND_ACCOUNT, Cluster
from tests.node_helpers import MIB, make_server, node, read, seeded_bytes, write

REGION = "cn-north-4"
STREAMS = 3 * STREAMS_PER_ACCOUNT
DISK_MIB = 64


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _wait(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)


def test_a_client_that_stops_reading_holds_only_its_own_streams(cluster: Cluster) -> None:
    greedy = node(cluster.channel(REGION, account=SECOND_ACCOUNT))
    big = make_server(greedy, [DISK_MIB])
    write(greedy, big.server_id, 0, 0, seeded_bytes(5, DISK_MIB * MIB))
    pid = cluster.node(REGION).pid
    before = _rss_mb(pid)

    # Many whole-disk reads, none of them read: each would send 64 MiB.
    request = pb.ReadDiskRequest(server_id=big.server_id, disk_index=0)
    calls = [greedy.ReadDisk(request, timeout=300) for _ in range(STREAMS)]
    try:
        _wait(lambda: sum(c.done() for c in calls) >= STREAMS - STREAMS_PER_ACCOUNT)
        refused = [c for c in calls if c.done()]
        assert len(refused) == STREAMS - STREAMS_PER_ACCOUNT
        for call in refused:
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "open streams" in (call.details() or "")

        # Another account is served, streams and all, and so are the greedy one's unary calls.
        other = node(cluster.channel(REGION, account=DEFAULT_ACCOUNT))
        mine = make_server(other, [8])
        data = seeded_bytes(6, 8 * MIB)
        write(other, mine.server_id, 0, 0, data)
        assert read(other, mine.server_id, 0) == data
        info = greedy.GetRegionInfo(pb.GetRegionInfoRequest(), timeout=30)
        assert info.region_id == REGION

        # Held back by flow control: far less than the 1 GiB the stalled reads ask for.
        time.sleep(1.0)
        grown = _rss_mb(pid) - before
        print(
            f"node RSS {before:.0f} MiB -> +{grown:.0f} MiB "
            f"with {STREAMS_PER_ACCOUNT} stalled reads"
        )
        assert grown < 256, f"the node grew by {grown:.0f} MiB for streams nobody reads"
    finally:
        for call in calls:
            call.cancel()

    # The slots come back once the streams end: the greedy account reads again.
    def reads_again() -> bool:
        try:
            return len(read(greedy, big.server_id, 0, 0, MIB)) == MIB
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return False

    _wait(reads_again)
