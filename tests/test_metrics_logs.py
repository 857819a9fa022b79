"""Metrics and logs (issue 14), checked against what happened in a real cluster: a backup
replicated to another region under a request ID the client chose, a refused call of each kind;
then every process is scraped over HTTP and its figures compared with the job's and the
nodes' own, and the three processes' JSON logs are searched for the request ID."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from csbs.config import METRICS_ADDRESS_FILE
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2, quotas_pb2
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.faults_pb2_grpc import FaultInjectionStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub, RegionNodeStub
from tests.harness import DEFAULT_REGIONS, Cluster, ProcessHandle, write_cluster_config
from tests.node_helpers import (
    MIB,
    backup,
    make_server,
    node,
    refusal,
    seeded_bytes,
    wait_until,
    write,
)
from tests.replication_helpers import follow

SOURCE, TARGET, BYSTANDER = "cn-north-4", "cn-east-3", "cn-south-1"
DISK_SIZES_MIB = [8, 4]

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(process: ProcessHandle) -> Samples:
    """Every sample a process's /metrics serves, by name and labels."""
    with urllib.request.urlopen(process.metrics_url, timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def handled(samples: Samples, service: str, method: str, code: str) -> float:
    return value(
        samples,
        "csbs_grpc_server_handled_total",
        grpc_service=f"csbs.v1.{service}",
        grpc_method=method,
        grpc_code=code,
    )


@dataclass(frozen=True)
class Story:
    request_id: str
    answered_request_id: str
    backup: pb.Backup
    job: cpb.ReplicationJob
    target_store_before: float
    scrapes: dict[str, Samples]


@pytest.fixture(scope="module")
def story(coordinated: Cluster) -> Story:
    source = node(coordinated.channel(SOURCE))
    server = make_server(source, DISK_SIZES_MIB)
    write(source, server.server_id, 0, MIB, seeded_bytes(14, 3 * MIB))
    backed_up = backup(source, server.server_id)
    target_store_before = value(scrape(coordinated.node(TARGET)), "csbs_chunk_store_bytes")

    coordinator = CoordinatorStub(coordinated.coordinator_channel())
    request_id = f"test-{uuid.uuid4().hex}"
    job, call = coordinator.ReplicateBackup.with_call(
        cpb.ReplicateBackupRequest(
            source_region_id=SOURCE, backup_id=backed_up.backup_id, target_region_id=TARGET
        ),
        timeout=30,
        metadata=[("x-request-id", request_id)],
    )
    answered = dict(call.initial_metadata()).get("x-request-id", "")
    done = follow(coordinator, job.job_id)[-1]
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason

    # Refused calls: a bad name (INVALID_ARGUMENT, by the coordinator's rules), an unknown
    # token (UNAUTHENTICATED, by the credential check before any servicer).
    code, _ = refusal(
        lambda: coordinator.ReplicateBackup(
            cpb.ReplicateBackupRequest(
                source_region_id=SOURCE,
                backup_id=backed_up.backup_id,
                target_region_id=TARGET,
                name="a/name\nwith bad characters",
            ),
            timeout=30,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    anonymous = RegionNodeStub(coordinated.channel(SOURCE, account=None))
    code, _ = refusal(
        lambda: anonymous.GetRegionInfo(
            pb.GetRegionInfoRequest(),
            timeout=10,
            metadata=[("authorization", "Bearer not-a-token-of-this-cluster")],
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # A fault rule's refusal (before the servicer) and a stream the servicer ends NOT_FOUND.
    bystander = node(coordinated.channel(BYSTANDER))
    FaultInjectionStub(coordinated.channel(BYSTANDER)).AddFaultRule(
        faults_pb2.FaultRule(method="/csbs.v1.RegionNode/GetQuotas", code="UNAVAILABLE", count=1),
        timeout=10,
    )
    code, _ = refusal(lambda: bystander.GetQuotas(quotas_pb2.GetQuotasRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    code, _ = refusal(
        lambda: list(bystander.WatchBackup(pb.GetBackupRequest(backup_id="no-such"), timeout=10))
    )
    assert code == grpc.StatusCode.NOT_FOUND

    processes = [*coordinated.nodes, coordinated.coordinator]
    return Story(
        request_id,
        answered,
        backed_up,
        done,
        target_store_before,
        {p.name: scrape(p) for p in processes},
    )


def test_every_process_publishes_where_it_serves_metrics(
    coordinated: Cluster, story: Story
) -> None:
    for process in [*coordinated.nodes, coordinated.coordinator]:
        published = (process.data_dir / METRICS_ADDRESS_FILE).read_text().strip()
        assert published.startswith("127.0.0.1:") and not published.endswith(":0")
        assert published == process.metrics_address != process.address
        assert any(
            name == "csbs_grpc_server_handled_total" for name, _ in story.scrapes[process.name]
        )


def test_a_replication_of_n_bytes_shows_n_bytes_sent_and_received(story: Story) -> None:
    sent = story.job.progress.bytes_sent
    assert sent >= 3 * MIB  # the chunks written, none held in the target before
    coordinator, target = story.scrapes["coordinator"], story.scrapes[TARGET]
    assert value(coordinator, "csbs_replication_bytes_sent_total") == sent
    assert value(target, "csbs_replication_bytes_received_total") == sent
    assert value(target, "csbs_replication_bytes_stored_total") >= sent
    assert value(target, "csbs_chunk_store_bytes") >= story.target_store_before + sent
    assert value(story.scrapes[SOURCE], "csbs_replication_bytes_received_total") == 0


def test_a_backup_shows_the_bytes_it_read_and_stored(story: Story) -> None:
    source = story.scrapes[SOURCE]
    assert story.backup.bytes_read > 0
    assert value(source, "csbs_backup_bytes_read_total") == story.backup.bytes_read
    assert value(source, "csbs_backup_bytes_stored_total") == story.backup.bytes_stored
    assert value(source, "csbs_backups_ended_total", status="available") == 1
    assert value(source, "csbs_disk_bytes") == sum(DISK_SIZES_MIB) * MIB
    assert value(source, "csbs_disks") == len(DISK_SIZES_MIB)


def test_calls_are_counted_by_their_final_status_code_refusals_too(story: Story) -> None:
    coordinator, source, target = (story.scrapes[n] for n in ("coordinator", SOURCE, TARGET))
    assert handled(coordinator, "Coordinator", "ReplicateBackup", "OK") == 1
    assert handled(coordinator, "Coordinator", "ReplicateBackup", "INVALID_ARGUMENT") == 1
    assert handled(source, "RegionNode", "GetRegionInfo", "UNAUTHENTICATED") == 1
    bystander = story.scrapes[BYSTANDER]
    assert handled(bystander, "RegionNode", "GetQuotas", "UNAVAILABLE") == 1
    assert handled(bystander, "RegionNode", "WatchBackup", "NOT_FOUND") == 1
    assert handled(bystander, "RegionNode", "WatchBackup", "OK") == 0
    assert handled(source, "RegionNodeInternal", "HoldBackup", "OK") >= 1
    assert handled(target, "RegionNodeInternal", "WriteChunks", "OK") >= 1
    assert handled(target, "RegionNodeInternal", "CompleteReplica", "OK") == 1
    seconds = value(
        coordinator,
        "csbs_grpc_server_handling_seconds_count",
        grpc_service="csbs.v1.Coordinator",
        grpc_method="ReplicateBackup",
    )
    assert seconds == 2


def test_a_call_its_caller_gave_up_on_is_counted_as_the_caller_saw_it(
    coordinated: Cluster, story: Story
) -> None:
    """The servicer answers OK after the deadline has passed (a delay rule holds it back): the
    caller saw DEADLINE_EXCEEDED, and so do the metrics; and a stream the caller closes after its
    first message counts CANCELLED, not OK."""
    process = coordinated.node(BYSTANDER)
    ok_before = handled(scrape(process), "RegionNode", "GetRegionInfo", "OK")
    FaultInjectionStub(coordinated.channel(BYSTANDER)).AddFaultRule(
        faults_pb2.FaultRule(method="/csbs.v1.RegionNode/GetRegionInfo", delay_ms=1500, count=1),
        timeout=10,
    )
    bystander = node(coordinated.channel(BYSTANDER))
    code, _ = refusal(lambda: bystander.GetRegionInfo(pb.GetRegionInfoRequest(), timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(
        lambda: handled(scrape(process), "RegionNode", "GetRegionInfo", "DEADLINE_EXCEEDED") == 1,
        15,
        "the late answer counted",
    )
    assert handled(scrape(process), "RegionNode", "GetRegionInfo", "OK") == ok_before

    server = make_server(bystander, [256], name="read-in-part")
    reading = bystander.ReadDisk(pb.ReadDiskRequest(server_id=server.server_id), timeout=30)
    next(reading)
    reading.cancel()
    wait_until(
        lambda: handled(scrape(process), "RegionNode", "ReadDisk", "CANCELLED") == 1,
        15,
        "the stream its caller closed counted",
    )
    assert handled(scrape(process), "RegionNode", "ReadDisk", "OK") == 0


def test_chunk_store_gauges_match_the_nodes_own_figures(coordinated: Cluster, story: Story) -> None:
    for region_id in (SOURCE, TARGET, BYSTANDER):
        admin = RegionNodeAdminStub(coordinated.channel(region_id))
        capacity = admin.GetRegionCapacity(quotas_pb2.GetRegionCapacityRequest(), timeout=10)
        now = scrape(coordinated.node(region_id))
        assert value(now, "csbs_chunk_store_bytes") == capacity.used_bytes
        chunks = value(now, "csbs_chunk_store_chunks")
        data = value(now, "csbs_chunk_store_data_bytes")
        if region_id == BYSTANDER:
            assert (chunks, data, capacity.used_bytes) == (0, 0, 0)
        else:
            # Each record holds the chunk's data and a 40-byte header.
            assert chunks > 0 and capacity.used_bytes == data + 40 * chunks


def test_jobs_by_status_count_the_success(story: Story) -> None:
    coordinator = story.scrapes["coordinator"]
    assert value(coordinator, "csbs_replication_jobs", status="success") == 1
    assert value(coordinator, "csbs_replication_jobs", status="failed") == 0
    assert value(coordinator, "csbs_replication_jobs_ended_total", status="success") == 1


def _log_lines(path: Path) -> list[dict[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines
    parsed = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "message", "process", "request_id"} <= entry.keys()
        parsed.append(entry)
    return parsed


def test_one_request_id_follows_the_replication_through_the_three_logs(
    coordinated: Cluster, story: Story
) -> None:
    assert story.answered_request_id == story.request_id
    logs = {
        SOURCE: coordinated.node(SOURCE).log_path,
        TARGET: coordinated.node(TARGET).log_path,
        "coordinator": coordinated.coordinator.log_path,
    }
    for process, path in logs.items():
        ours = [e for e in _log_lines(path) if e["request_id"] == story.request_id]
        assert ours, f"no line of {process} carries the request ID"
        assert {e["process"] for e in ours} == {process}
        messages = " ".join(str(e["message"]) for e in ours)
        if process == TARGET:
            assert "WriteChunks OK" in messages and "CompleteReplica OK" in messages
        if process == SOURCE:
            assert "ReadChunks OK" in messages and "HoldBackup OK" in messages
        if process == "coordinator":
            assert story.job.job_id in messages


# Last in the module: it restarts the coordinator (the story's scrapes were taken before).
def test_a_job_resumed_after_a_coordinator_crash_still_carries_its_request_id(
    coordinated: Cluster, story: Story
) -> None:
    source = node(coordinated.channel(SOURCE))
    server = make_server(source, [2])
    write(source, server.server_id, 0, 0, seeded_bytes(15, MIB))
    backed_up = backup(source, server.server_id)
    target_faults = FaultInjectionStub(coordinated.channel(TARGET))
    target_faults.AddFaultRule(
        faults_pb2.FaultRule(
            method="/csbs.v1.RegionNodeInternal/CreateReplica", code="UNAVAILABLE"
        ),
        timeout=10,
    )
    request_id = f"test-resumed-{uuid.uuid4().hex}"
    coordinator = CoordinatorStub(coordinated.coordinator_channel())
    job = coordinator.ReplicateBackup(
        cpb.ReplicateBackupRequest(
            source_region_id=SOURCE, backup_id=backed_up.backup_id, target_region_id=TARGET
        ),
        timeout=30,
        metadata=[("x-request-id", request_id)],
    )
    wait_until(
        lambda: (
            coordinator.GetReplicationJob(
                cpb.GetReplicationJobRequest(job_id=job.job_id), timeout=10
            ).attempts
            >= 2
        ),
        30,
        "retrying the replica the target refuses",
    )
    coordinated.coordinator.kill()
    target_faults.ClearFaultRules(faults_pb2.ClearFaultRulesRequest(), timeout=10)
    coordinated.coordinator.start()
    coordinated.coordinator.wait_ready()

    coordinator = CoordinatorStub(coordinated.coordinator_channel())
    done = follow(coordinator, job.job_id)[-1]
    assert done.status == cpb.REPLICATION_JOB_STATUS_SUCCESS, done.failure_reason
    target_lines = [
        str(e["message"])
        for e in _log_lines(coordinated.node(TARGET).log_path)
        if e["request_id"] == request_id
    ]
    # Refused before the crash, made by the resumed job after it: both under the request's ID.
    assert any("CreateReplica UNAVAILABLE" in m for m in target_lines), target_lines
    assert any("CreateReplica OK" in m for m in target_lines), target_lines
    assert any("WriteChunks OK" in m for m in target_lines), target_lines
    resumed = [
        e
        for e in _log_lines(coordinated.coordinator.log_path)
        if e["request_id"] == request_id and "success" in str(e["message"])
    ]
    assert len(resumed) == 1 and job.job_id in str(resumed[0]["message"])


@pytest.mark.parametrize("process", ["cn-north-4", "coordinator"])
def test_a_metrics_port_in_use_ends_the_process_at_once_naming_it(
    tmp_path: Path, process: str
) -> None:
    """Bound before the process starts anything: exit 2 and the address, not a process that
    serves gRPC without its metrics (or hangs)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        regions = [{**r, "metrics_listen": listen} for r in DEFAULT_REGIONS]
        config = write_cluster_config(tmp_path, regions, coordinator={"metrics_listen": listen})
        module = ["-m", "coordinator"] if process == "coordinator" else ["-m", "region_node"]
        region = [] if process == "coordinator" else ["--region", process]
        done = subprocess.run(
            [sys.executable, *module, "--config", str(config), *region],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on {listen}" in done.stderr
    assert not any((tmp_path / "data").rglob("address"))  # never said it was ready
