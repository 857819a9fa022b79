"""Issue 11: a seeded fault test of a whole cluster (three region nodes and the coordinator on a
simulated clock), checked against what the product rules promise.

Two policies protect three servers of cn-north-4: one keeps the newest 3 backups and replicates
daily to cn-east-3 (keeping 2 replicas of each server there), the other keeps 3 days of backups
and replicates daily to cn-south-1. Day after day the clock is advanced while the engine writes
to the servers, asks for manual replications, and, at seeded moments, kills the coordinator or
a node (`kill -9`, then restart) or pauses a node (SIGSTOP, SIGCONT); as root, cn-south-1's data
lives on a small tmpfs that fills up for one day. The world around the regions fails too (issue
13): the link to cn-east-3 is slow (a day's changes take an hour or two of simulated time), and
on seeded days, for a seeded window of simulated hours, a link is cut, a region is out, or a
node's fault rule fails or delays calls of the replication. At the end:
- every due run happened exactly once, and every run ended (success, or failed with a reason);
- every job ended (success, or failed with a reason) and owes no node anything;
- every available replica names the same chunks as its source backup and verifies whole;
- R3 (one replica of a backup per region) held after every day, R4b (a policy replicates a
  backup to a region once) held, and no replica is left replicating and no hold is left.
A failure names the seed: `python -m tests.cluster_soak --seed N --days D` replays it."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorAdminStub, CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeInternalStub, RegionNodeStub
from tests.filesystems import Filler, small_filesystem
from tests.harness import Cluster, stop_cleanly_on_sigterm, write_cluster_config
from tests.node_helpers import MIB, node_with_deadline
from tests.soak_world import SLOW_LINK, WORLD_FAULTS, World

SOURCE, EAST, SOUTH = "cn-north-4", "cn-east-3", "cn-south-1"
REGIONS: tuple[dict[str, Any], ...] = (
    {"id": SOURCE, "name": "CN North-Beijing4", "accepts_replication": True},
    {"id": EAST, "name": "CN East-Shanghai1", "accepts_replication": True},
    {"id": SOUTH, "name": "CN South-Guangzhou", "accepts_replication": True},
)
DEADLINE = 30.0
ADVANCE_DEADLINE = 240.0
SOUTH_TMPFS_MIB = 160
JOB_ENDED = (cpb.REPLICATION_JOB_STATUS_SUCCESS, cpb.REPLICATION_JOB_STATUS_FAILED)
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class ClusterSoakReport:
    seed: int
    days: int
    faults: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)  # by status
    jobs: dict[str, int] = field(default_factory=dict)  # by status
    manual_asked: int = 0
    manual_refused: dict[str, int] = field(default_factory=dict)  # by status code
    replicas_checked: int = 0
    filled_day: int = -1

    def line(self) -> str:
        import json

        return json.dumps(asdict(self), sort_keys=True)


class _ClusterSoak:
    def __init__(self, seed: int, days: int, cluster: Cluster, filler: Filler | None) -> None:
        self.rng = random.Random(seed)
        self.cluster = cluster
        self.filler = filler
        self.report = ClusterSoakReport(seed, days)
        self.servers: list[str] = []
        self.policies: dict[str, str] = {}  # policy ID -> target region
        self.world = World(cluster, self.rng)

    # -- calls ------------------------------------------------------------------------------
    def coordinator(self) -> CoordinatorStub:
        return CoordinatorStub(self.cluster.coordinator_channel())

    def admin(self) -> CoordinatorAdminStub:
        return CoordinatorAdminStub(self.cluster.coordinator_channel())

    def node(self, region: str) -> RegionNodeStub:
        return node_with_deadline(self.cluster.channel(region), DEADLINE)

    def internal(self, region: str) -> RegionNodeInternalStub:
        return RegionNodeInternalStub(self.cluster.channel(region))

    def fault(self, what: str) -> None:
        self.report.faults[what] = self.report.faults.get(what, 0) + 1

    def now(self) -> datetime:
        clock = self.coordinator().GetClock(cpb.GetClockRequest(), timeout=DEADLINE)
        now: datetime = clock.now.ToDatetime(tzinfo=UTC)
        return now

    # -- set-up -------------------------------------------------------------------------------
    def set_up(self) -> None:
        self.world.set_link(SOURCE, EAST, SLOW_LINK, cut=False)
        north = self.node(SOURCE)
        for i in range(3):
            server = north.CreateServer(
                pb.CreateServerRequest(name=f"soak-{i}", disks=[pb.DiskSpec(size_bytes=8 * MIB)])
            )
            self.servers.append(server.server_id)
            self.write(server.server_id, 4 * MIB)
        for servers, backup_at, retention, target, repl_at in (
            (self.servers[:2], 2, cpb.RetentionRule(keep_count=3), EAST, 3),
            (self.servers[2:], 4, cpb.RetentionRule(keep_days=3), SOUTH, 5),
        ):
            policy = self.coordinator().CreatePolicy(
                cpb.CreatePolicyRequest(
                    policy=cpb.Policy(
                        region_id=SOURCE,
                        name=f"soak-to-{target}",
                        enabled=True,
                        server_ids=servers,
                        backup_schedule=cpb.Schedule(rrule=_daily_at(backup_at)),
                        retention=retention,
                        replication=cpb.PolicyReplication(
                            enabled=True,
                            target_region_id=target,
                            schedule=cpb.Schedule(rrule=_daily_at(repl_at)),
                            replica_keep_count=2,
                        ),
                    )
                ),
                timeout=DEADLINE,
            )
            self.policies[policy.policy_id] = target

    def write(self, server_id: str, length: int) -> None:
        offset = self.rng.randrange(0, 8 * MIB - length + 1)
        data = self.rng.randbytes(length)
        request = pb.WriteDiskRequest(server_id=server_id, disk_index=0, offset=offset, data=data)
        self.node(SOURCE).WriteDisk(iter([request]))

    # -- one simulated day ---------------------------------------------------------------------
    def day(self, number: int) -> None:
        for server_id in self.servers:
            with contextlib.suppress(grpc.RpcError):  # a node paused or restarting: next day
                self.write(server_id, self.rng.choice((64 << 10, 512 << 10, MIB)))
        if self.rng.random() < 0.8:
            self.manual_replication(number)
        if self.filler is not None and number == self.report.filled_day:
            self.filler.fill()
            self.fault("fill")
        start = self.now()
        target = start + timedelta(days=1)
        if self.rng.random() < 0.5:
            self.world_fault(start)
        advancing = self.advance(target)
        if self.rng.random() < 0.7:
            time.sleep(self.rng.uniform(0.05, 1.5))
            self.inject()
        self.finish_advance(advancing, target)
        if self.filler is not None and number == self.report.filled_day:
            self.filler.remove()
        self.check_r3()

    def world_fault(self, start: datetime) -> None:
        """One of the world's faults for a window of simulated hours of the day (when the
        policies' runs fall due or their jobs go on), set and lifted between two advances."""
        kind = self.rng.choice(WORLD_FAULTS)
        self.fault(kind)
        begin = start + timedelta(minutes=self.rng.randrange(30, 300))
        end = begin + timedelta(minutes=self.rng.randrange(10, 180))
        self.finish_advance(self.advance(begin), begin)
        undo = self.world.apply(kind)
        self.finish_advance(self.advance(end), end)
        undo()

    def manual_replication(self, number: int) -> None:
        """M1 of a random available backup to a random target; a refusal by a rule (R3: one
        is there already) or by a fault is fine and counted."""
        try:
            backups = self.node(SOURCE).ListBackups(pb.ListBackupsRequest(page_size=1000))
            available = [b for b in backups.backups if b.status == pb.BACKUP_STATUS_AVAILABLE]
            if not available:
                return
            chosen = self.rng.choice(available)
            target = self.rng.choice((EAST, SOUTH))
            self.report.manual_asked += 1
            self.coordinator().ReplicateBackup(
                cpb.ReplicateBackupRequest(
                    source_region_id=SOURCE,
                    backup_id=chosen.backup_id,
                    target_region_id=target,
                    idempotency_token=f"soak-{self.report.seed}-{number}",
                ),
                timeout=DEADLINE,
            )
        except grpc.RpcError as exc:
            code = exc.code().name
            self.report.manual_refused[code] = self.report.manual_refused.get(code, 0) + 1
            assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), exc

    def advance(self, to: datetime) -> grpc.Future:
        request = cpb.AdvanceClockRequest()
        request.to.FromDatetime(to)
        future: grpc.Future = self.admin().AdvanceClock.future(request, timeout=ADVANCE_DEADLINE)
        return future

    def finish_advance(self, advancing: grpc.Future, to: datetime) -> None:
        """Until the clock has reached `to` with everything due run (a coordinator killed
        meanwhile cuts the call: it is asked again)."""
        for _ in range(10):
            try:
                advancing.result()
                return
            except grpc.RpcError as exc:
                if exc.code() not in TRANSIENT:
                    raise
            time.sleep(0.5)
            advancing = self.advance(to)
        raise AssertionError(f"AdvanceClock to {to} never finished")

    def inject(self) -> None:
        kind = self.rng.choice(("kill coordinator", "kill node", "pause node"))
        self.fault(kind)
        if kind == "kill coordinator":
            self.cluster.coordinator.kill()
            self.cluster.coordinator.restart()
            return
        region = self.rng.choice((SOURCE, EAST, SOUTH))
        process = self.cluster.node(region)
        if kind == "kill node":
            process.kill()
            process.restart()
        else:
            process.pause()
            time.sleep(self.rng.uniform(0.3, 2.0))
            process.resume()

    # -- checks ---------------------------------------------------------------------------------
    def replicas(self, region: str) -> list[pb.Backup]:
        answer = self.node(region).ListBackups(pb.ListBackupsRequest(page_size=1000))
        return [b for b in answer.backups if b.origin.replicated]

    def check_r3(self) -> None:
        for region in (EAST, SOUTH):
            live = Counter(
                r.origin.source_backup_id
                for r in self.replicas(region)
                if r.status in (pb.BACKUP_STATUS_AVAILABLE, pb.BACKUP_STATUS_REPLICATING)
            )
            twice = {b: n for b, n in live.items() if n > 1}
            assert not twice, f"R3: region {region} holds several replicas of {twice}"

    def jobs(self) -> list[cpb.ReplicationJob]:
        answer = self.coordinator().ListReplicationJobs(
            cpb.ListReplicationJobsRequest(page_size=1000), timeout=DEADLINE
        )
        return list(answer.jobs)

    def settle_jobs(self, timeout: float = 180.0) -> list[cpb.ReplicationJob]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            open_ = [j for j in jobs if j.status not in JOB_ENDED or j.cleanup_pending]
            if not open_:
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(
                    "jobs never ended or still owe a node: "
                    + "; ".join(
                        f"{j.job_id} {cpb.ReplicationJobStatus.Name(j.status)} {j.cleanup_pending}"
                        for j in open_
                    )
                )
            time.sleep(1.0)

    def check_runs(self, first: dict[str, dict[int, datetime]], end: datetime) -> None:
        for policy_id, kinds in first.items():
            runs = (
                self.coordinator()
                .ListPolicyRuns(
                    cpb.ListPolicyRunsRequest(policy_id=policy_id, page_size=1000), timeout=DEADLINE
                )
                .runs
            )
            for run in runs:
                status = cpb.PolicyRunStatus.Name(run.status)
                self.report.runs[status] = self.report.runs.get(status, 0) + 1
                assert run.status != cpb.POLICY_RUN_STATUS_RUNNING, f"a run never ended: {run}"
                if run.status == cpb.POLICY_RUN_STATUS_FAILED:
                    assert run.reason, f"a run failed without a reason: {run}"
            for kind, due in kinds.items():
                instants = _daily(due, end)
                seen = Counter(
                    r.scheduled_at.ToDatetime(tzinfo=UTC)
                    for r in runs
                    if r.kind == kind and r.trigger == cpb.POLICY_RUN_TRIGGER_SCHEDULE
                )
                assert sorted(seen) == instants and set(seen.values()) <= {1}, (
                    f"policy {policy_id} kind {kind}: due {len(instants)}, ran {dict(seen)}"
                )

    def check_jobs_and_replicas(self) -> None:
        jobs = self.settle_jobs()
        for job in jobs:
            status = cpb.ReplicationJobStatus.Name(job.status)
            self.report.jobs[status] = self.report.jobs.get(status, 0) + 1
            if job.status == cpb.REPLICATION_JOB_STATUS_FAILED:
                assert job.failure_reason, f"job {job.job_id} failed without a reason"
        by_policy = Counter(
            (j.source_backup_id, j.target_region_id)
            for j in jobs
            if j.policy_id and j.status == cpb.REPLICATION_JOB_STATUS_SUCCESS
        )
        again = [k for k, n in by_policy.items() if n > 1]
        assert not again, f"R4b: a policy replicated a backup to a region twice: {again}"
        self.check_r3()
        for region in (EAST, SOUTH):
            for replica in self.replicas(region):
                assert replica.status != pb.BACKUP_STATUS_REPLICATING, (
                    f"replica {replica.backup_id} in {region} is left replicating"
                )
                if replica.status == pb.BACKUP_STATUS_AVAILABLE:
                    self.check_replica(region, replica)

    def check_replica(self, region: str, replica: pb.Backup) -> None:
        ours = _manifest(self.internal(region), replica.backup_id)
        with contextlib.suppress(grpc.RpcError):  # the source may be gone by retention
            source = _manifest(self.internal(SOURCE), replica.origin.source_backup_id)
            assert ours == source, f"replica {replica.backup_id} differs from its source"
        verified = list(
            self.node(region).VerifyBackup(
                pb.VerifyBackupRequest(backup_id=replica.backup_id), timeout=120
            )
        )[-1]
        assert verified.chunks_bad == 0, f"replica {replica.backup_id}: {verified}"
        self.report.replicas_checked += 1


def _manifest(internal: RegionNodeInternalStub, backup_id: str) -> list[tuple[int, int, bytes]]:
    parts = internal.GetBackupManifest(
        pb.GetBackupManifestRequest(backup_id=backup_id), timeout=DEADLINE
    )
    return [(e.disk_index, e.chunk_index, e.hash) for p in parts for e in p.entries]


def _daily_at(hour: int) -> str:
    return f"FREQ=DAILY;BYHOUR={hour};BYMINUTE=0"


def _daily(first: datetime, end: datetime) -> list[datetime]:
    instants = []
    while first <= end:
        instants.append(first)
        first += timedelta(days=1)
    return instants


def _holds_left(data_dir: Path) -> int:
    with contextlib.closing(
        sqlite3.connect(f"file:{data_dir / 'catalog.db'}?mode=ro", uri=True)
    ) as db:
        return int(db.execute("SELECT COUNT(*) FROM holds").fetchone()[0])


@contextlib.contextmanager
def _south_on_tmpfs(workdir: Path) -> Iterator[Filler | None]:
    if os.geteuid() != 0:
        yield None  # no full region without root; everything else runs
        return
    with small_filesystem(workdir / "data" / SOUTH, SOUTH_TMPFS_MIB) as south:
        filler = Filler(south)
        try:
            yield filler
        finally:
            filler.remove()


def run_cluster_soak(seed: int, days: int, workdir: Path) -> ClusterSoakReport:
    config = write_cluster_config(
        workdir,
        regions=REGIONS,
        simulated_clock=True,
        coordinator={"cleanup_interval_seconds": 1, "retry_budget_seconds": 20},
    )
    with _south_on_tmpfs(workdir) as filler, Cluster(config) as cluster:
        cluster.start(coordinator=True)
        soak = _ClusterSoak(seed, days, cluster, filler)
        try:
            if filler is not None:
                soak.report.filled_day = soak.rng.randrange(days)
            soak.set_up()
            first: dict[str, dict[int, datetime]] = {
                p.policy_id: {
                    cpb.POLICY_RUN_KIND_BACKUP: p.next_backup_at.ToDatetime(tzinfo=UTC),
                    cpb.POLICY_RUN_KIND_REPLICATION: p.next_replication_at.ToDatetime(tzinfo=UTC),
                }
                for p in soak.coordinator()
                .ListPolicies(cpb.ListPoliciesRequest(page_size=100), timeout=DEADLINE)
                .policies
            }
            for number in range(days):
                soak.day(number)
            # The world comes back, and the jobs it held up (a slow link, retries waiting on
            # the cluster clock) have an hour of simulated time to end.
            soak.world.lift()
            end = soak.now() + timedelta(hours=1)
            soak.finish_advance(soak.advance(end), end)  # everything due has run and ended
            soak.check_runs(first, end)
            soak.check_jobs_and_replicas()
        except SystemExit:
            raise  # stopped from outside (SIGTERM): not a failure of this seed
        except BaseException as exc:
            raise AssertionError(
                f"seed {seed}: python -m tests.cluster_soak --seed {seed} --days {days} "
                f"replays it\n{exc}\nreport: {soak.report.line()}"
            ) from exc
        data_dir = cluster.config.region(SOURCE).data_dir
    assert _holds_left(data_dir) == 0, f"seed {seed}: holds left on {SOURCE}"
    return soak.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_soak", description=__doc__)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 24))
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument(
        "--seconds", type=float, default=0, help="go on with the next seeds for this long"
    )
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    until = time.monotonic() + args.seconds
    seed = args.seed
    while True:
        print(f"cluster soak: seed {seed}, {args.days} simulated days", flush=True)
        with tempfile.TemporaryDirectory(prefix="csbs-cluster-soak-") as tmp:
            report = run_cluster_soak(seed, args.days, Path(tmp))
        print(report.line(), flush=True)
        seed += 1
        if time.monotonic() >= until:
            return 0


if __name__ == "__main__":
    sys.exit(main())
