"""Issue 11, bounded for `make test`: the seeded fault test of a whole cluster
(tests/cluster_soak.py) over a few simulated days. The seed comes from the clock (or
CSBS_SOAK_SEED) and is printed; a failure names it with the command that replays it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.cluster_soak import run_cluster_soak

DAYS = 5

pytestmark = pytest.mark.timeout(600)


def test_every_due_run_once_every_job_ends_and_replicas_match_under_faults(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CSBS_SOAK_SEED") or time.time_ns() // 1000 % 1_000_000)
    print(f"cluster soak: seed {seed} (replay: python -m tests.cluster_soak --seed {seed})")
    report = run_cluster_soak(seed, DAYS, tmp_path)
    print(report.line())
    # A run that checked nothing proves nothing.
    assert sum(report.runs.values()) >= 4 * DAYS, report.line()
    assert report.jobs.get("REPLICATION_JOB_STATUS_SUCCESS", 0) > 0, report.line()
    assert report.replicas_checked > 0, report.line()
