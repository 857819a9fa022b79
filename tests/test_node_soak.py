"""Issue 10, bounded for `make test`: the seeded fault test of a region node (tests/node_soak.py)
for about a minute. The seed comes from the clock (or CSBS_SOAK_SEED) and is printed; a
failure names it with the `make soak` command that replays it for longer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.node_soak import run_soak

SECONDS = 40.0  # of faults and calls; the final checks and deletions come on top

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the soak mounts a tmpfs for the node's data: that needs root"
    ),
]


def test_a_node_under_kills_and_a_full_disk_keeps_what_the_model_says(tmp_path: Path) -> None:
    seed = int(os.environ.get("CSBS_SOAK_SEED") or time.time_ns() // 1000 % 1_000_000)
    print(f"node soak: seed {seed} (replay: make soak SEED={seed} SECONDS={SECONDS:g})")
    report = run_soak(seed, SECONDS, tmp_path)
    print(report.json())
    # A run that checked nothing proves nothing.
    assert report.writes_acknowledged > 0, report.json()
    assert report.kills + report.fills > 0, report.json()
    assert report.backups_verified > 0, report.json()
