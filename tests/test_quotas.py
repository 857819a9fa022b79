"""Issue 13, per-project quotas as the real service has them (`GET /v1/{project_id}/quotas`):
`backups` (how many backups and replicas a project holds in a region) and `backup_capacity`
(their sizes, in GB). GetQuotas for the caller's own projects, SetProjectQuota for the operator;
a backup, a policy's backup or a replica that would go beyond a quota is RESOURCE_EXHAUSTED
naming the quota, its limit and its use, leaves nothing half-made, and racing calls cannot both
take the last slot. Real region nodes and a real coordinator; each test has a project of its
own, so that its counts are its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from csbs.config import ConfigError, load_cluster_config
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import quotas_pb2 as qpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub, RegionNodeStub
from tests.harness import (
    ACCOUNT_TOKENS,
    DEFAULT_ACCOUNT,
    SECOND_ACCOUNT,
    Cluster,
    write_cluster_config,
)
from tests.node_helpers import (
    MIB,
    all_backups,
    backup,
    make_server,
    node,
    refusal,
    seeded_bytes,
    wait_backup,
    write,
)
from tests.replication_helpers import follow, replicate

pytestmark = pytest.mark.timeout(180)

SOURCE = "cn-north-4"
TARGET = "cn-east-3"
GIB_MIB = 1024  # a disk of 1 GiB (sparse: only what is written is read and stored)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# Projects of the default account in the source region, one per test; the config gives the
# first its quotas.
PROJECTS = ("configured", "counts", "full", "race", "capacity", "freed", "policy", "cli")
CONFIGURED = f"{SOURCE}_configured"
TARGET_PROJECT = f"{TARGET}_quota"


def _project(name: str, main: bool = False) -> dict[str, object]:
    return {"id": name, "name": name, "account": DEFAULT_ACCOUNT, "main": main}


def _regions(configured_backups: int = 1) -> list[dict[str, object]]:
    return [
        {
            "id": SOURCE,
            "accepts_replication": True,
            "projects": [
                _project(f"{SOURCE}_default", main=True),
                *(_project(f"{SOURCE}_{p}") for p in PROJECTS),
            ],
            "quotas": [
                {"project": CONFIGURED, "backups": configured_backups, "backup_capacity_gb": 5}
            ],
        },
        {
            "id": TARGET,
            "accepts_replication": True,
            "projects": [_project(f"{TARGET}_default", main=True), _project(TARGET_PROJECT)],
        },
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    config = write_cluster_config(tmp_path_factory.mktemp("quotas"), regions=_regions())
    with Cluster(config) as running:
        running.start(coordinator=True)
        yield running


def _node(cluster: Cluster, region: str = SOURCE) -> RegionNodeStub:
    return node(cluster.channel(region))


def _quotas(
    cluster: Cluster, project_id: str, region: str = SOURCE
) -> dict[str, qpb.QuotaResource]:
    answer = _node(cluster, region).GetQuotas(
        qpb.GetQuotasRequest(project_id=project_id), timeout=30
    )
    assert answer.project_id == project_id
    return {r.type: r for r in answer.resources}


def _set_quota(
    cluster: Cluster, project_id: str, quota_type: str, quota: int, region: str = SOURCE
) -> qpb.Quotas:
    answer: qpb.Quotas = RegionNodeAdminStub(cluster.channel(region)).SetProjectQuota(
        qpb.SetProjectQuotaRequest(project_id=project_id, type=quota_type, quota=quota),
        timeout=30,
    )
    return answer


def _server(stub: RegionNodeStub, project_id: str, seed: int, size_mib: int = 16) -> pb.Server:
    server = make_server(stub, [size_mib], project_id=project_id)
    write(stub, server.server_id, 0, 0, seeded_bytes(seed, MIB), project_id=project_id)
    return server


def _create(
    stub: RegionNodeStub, project_id: str, server_id: str, request_id: str = ""
) -> pb.Backup:
    created: pb.Backup = stub.CreateBackup(
        pb.CreateBackupRequest(project_id=project_id, server_id=server_id, request_id=request_id),
        timeout=30,
    )
    return created


def test_get_quotas_has_the_real_apis_shape_and_counts_backups_and_their_disks(
    cluster: Cluster,
) -> None:
    project = f"{SOURCE}_counts"
    stub = _node(cluster)
    empty = _node(cluster).GetQuotas(qpb.GetQuotasRequest(project_id=project), timeout=30)
    assert [(r.type, r.quota, r.used, r.unit) for r in empty.resources] == [
        ("backups", -1, 0, ""),
        ("backup_capacity", -1, 0, "GB"),
    ]
    server = _server(stub, project, 1, size_mib=GIB_MIB + 16)
    backup(stub, server.server_id, project_id=project)
    backup(stub, server.server_id, project_id=project)
    quotas = _quotas(cluster, project)
    assert quotas["backups"].used == 2
    # Two backups of a disk of 1 GiB + 16 MiB: 2 GiB + 32 MiB, rounded up to whole GB.
    assert quotas["backup_capacity"].used == 3
    # The caller's main project when none is named.
    main = _node(cluster).GetQuotas(qpb.GetQuotasRequest(), timeout=30)
    assert main.project_id == f"{SOURCE}_default"


def test_a_backup_beyond_the_backups_quota_is_refused_naming_quota_limit_and_use(
    cluster: Cluster,
) -> None:
    project = f"{SOURCE}_full"
    stub = _node(cluster)
    _set_quota(cluster, project, "backups", 2)
    server = _server(stub, project, 2)
    first = _create(stub, project, server.server_id, request_id="first-of-two")
    wait_backup(stub, first.backup_id, project)
    backup(stub, server.server_id, project_id=project)
    write(stub, server.server_id, 0, 4 * MIB, seeded_bytes(3, 4 * MIB), project_id=project)
    used = _region_used(cluster)

    code, details = refusal(lambda: _create(stub, project, server.server_id))
    assert code == EXHAUSTED, (code, details)
    assert details.startswith(f"quota backups of project {project}: limit 2, used 2"), details
    # Nothing half-made: no backup row, nothing read or stored, the server not held.
    assert len(all_backups(stub, project)) == 2
    assert _region_used(cluster) == used
    assert _quotas(cluster, project)["backups"].used == 2
    # A retry of a call that was accepted is still answered with its backup.
    again = _create(stub, project, server.server_id, request_id="first-of-two")
    assert again.backup_id == first.backup_id
    # A higher quota lets the same server be backed up at once.
    _set_quota(cluster, project, "backups", 3)
    assert backup(stub, server.server_id, project_id=project).status == pb.BACKUP_STATUS_AVAILABLE


def test_backups_racing_for_the_last_slot_exactly_one_is_taken(cluster: Cluster) -> None:
    project = f"{SOURCE}_race"
    stub = _node(cluster)
    servers = [_server(stub, project, 10 + i, size_mib=4) for i in range(8)]
    _set_quota(cluster, project, "backups", 1)

    def attempt(server: pb.Server) -> grpc.StatusCode:
        try:
            _create(stub, project, server.server_id)
        except grpc.RpcError as exc:
            assert exc.code() == EXHAUSTED, exc.details()
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        codes = list(pool.map(attempt, servers))
    assert codes.count(grpc.StatusCode.OK) == 1, codes
    (made,) = all_backups(stub, project)
    assert wait_backup(stub, made.backup_id, project).status == pb.BACKUP_STATUS_AVAILABLE


def test_backup_capacity_counts_disks_sizes_and_refuses_a_backup_that_does_not_fit(
    cluster: Cluster,
) -> None:
    project = f"{SOURCE}_capacity"
    stub = _node(cluster)
    _set_quota(cluster, project, "backup_capacity", 1)
    server = _server(stub, project, 20, size_mib=GIB_MIB)
    backup(stub, server.server_id, project_id=project)  # 1 GiB of 1 GB: fits exactly

    code, details = refusal(lambda: _create(stub, project, server.server_id))
    assert code == EXHAUSTED, (code, details)
    assert details.startswith(
        f"quota backup_capacity of project {project}: limit 1 GB, used 1 GB (1073741824 bytes), "
        "and the backup's disks take 1 GiB (1073741824 bytes) more"
    ), details
    assert _quotas(cluster, project)["backup_capacity"].used == 1


def test_deleting_a_backup_gives_its_quota_back(cluster: Cluster) -> None:
    project = f"{SOURCE}_freed"
    stub = _node(cluster)
    _set_quota(cluster, project, "backups", 1)
    server = _server(stub, project, 30)
    made = backup(stub, server.server_id, project_id=project)
    assert refusal(lambda: _create(stub, project, server.server_id))[0] == EXHAUSTED

    stub.DeleteBackup(pb.DeleteBackupRequest(project_id=project, backup_id=made.backup_id))
    assert _quotas(cluster, project)["backups"].used == 0
    assert backup(stub, server.server_id, project_id=project).status == pb.BACKUP_STATUS_AVAILABLE


def test_a_replication_into_a_project_at_its_quota_fails_naming_it_and_leaves_no_replica(
    cluster: Cluster,
) -> None:
    coordinator = CoordinatorStub(cluster.coordinator_channel())
    stub = _node(cluster)
    server = _server(stub, "", 40)
    source = backup(stub, server.server_id)
    _set_quota(cluster, TARGET_PROJECT, "backups", 0, region=TARGET)

    started = time.monotonic()
    job = replicate(coordinator, source.backup_id, SOURCE, TARGET, target_project_id=TARGET_PROJECT)
    ended = follow(coordinator, job.job_id)[-1]
    assert ended.status == cpb.REPLICATION_JOB_STATUS_FAILED, ended
    assert time.monotonic() - started < 60, "a quota is not worth retrying"
    assert f"quota backups of project {TARGET_PROJECT}: limit 0, used 0" in ended.failure_reason
    assert not all_backups(_node(cluster, TARGET), TARGET_PROJECT)
    assert ended.cleanup_pending == "", ended.cleanup_pending
    # The source backup records the failure with the same words.
    after = stub.GetBackup(pb.GetBackupRequest(backup_id=source.backup_id), timeout=30)
    (record,) = [r for r in after.replications if r.job_id == job.job_id]
    assert f"quota backups of project {TARGET_PROJECT}" in record.failure_reason, record

    _set_quota(cluster, TARGET_PROJECT, "backups", -1, region=TARGET)
    again = replicate(
        coordinator, source.backup_id, SOURCE, TARGET, target_project_id=TARGET_PROJECT
    )
    assert follow(coordinator, again.job_id)[-1].status == cpb.REPLICATION_JOB_STATUS_SUCCESS
    assert _quotas(cluster, TARGET_PROJECT, TARGET)["backups"].used == 1


def test_a_policy_backup_at_its_quota_is_a_failed_item_of_the_run_with_the_reason(
    cluster: Cluster,
) -> None:
    project = f"{SOURCE}_policy"
    stub = _node(cluster)
    coordinator = CoordinatorStub(cluster.coordinator_channel())
    kept, refused = _server(stub, project, 50, size_mib=4), _server(stub, project, 51, size_mib=4)
    backup(stub, kept.server_id, project_id=project)
    _set_quota(cluster, project, "backups", 2)
    policy = coordinator.CreatePolicy(
        cpb.CreatePolicyRequest(
            policy=cpb.Policy(
                region_id=SOURCE,
                project_id=project,
                name="quota",
                enabled=True,
                server_ids=[kept.server_id, refused.server_id],
                backup_schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=2;BYMINUTE=0"),
            )
        ),
        timeout=30,
    )
    run = coordinator.ExecutePolicy(
        cpb.ExecutePolicyRequest(policy_id=policy.policy_id, kind=cpb.POLICY_RUN_KIND_BACKUP),
        timeout=60,
    )
    run = _wait_run(coordinator, policy.policy_id, run.run_id)
    by_server = {i.server_id: i for i in run.items}
    assert by_server[kept.server_id].action == "backed_up", run
    failed = by_server[refused.server_id]
    assert failed.action == "failed", run
    assert failed.reason.startswith(f"quota backups of project {project}: limit 2, used 2"), run


def _wait_run(coordinator: CoordinatorStub, policy_id: str, run_id: str) -> cpb.PolicyRun:
    deadline = time.monotonic() + 60
    while True:
        runs = coordinator.ListPolicyRuns(
            cpb.ListPolicyRunsRequest(policy_id=policy_id, page_size=100), timeout=30
        ).runs
        (run,) = [r for r in runs if r.run_id == run_id]
        if run.status != cpb.POLICY_RUN_STATUS_RUNNING:
            return run  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def test_only_the_operator_sets_quotas_and_only_for_projects_of_the_caller(
    cluster: Cluster,
) -> None:
    as_user = [("authorization", f"Bearer {ACCOUNT_TOKENS[DEFAULT_ACCOUNT]}")]
    admin = RegionNodeAdminStub(cluster.channel(SOURCE, account=None))
    request = qpb.SetProjectQuotaRequest(project_id=f"{SOURCE}_default", type="backups", quota=0)
    code, _ = refusal(lambda: admin.SetProjectQuota(request, metadata=as_user, timeout=30))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert _quotas(cluster, f"{SOURCE}_default")["backups"].quota == -1

    # Another account's project is refused as every call refuses it (issue 6): PERMISSION_DENIED,
    # and a project that does not exist is NOT_FOUND.
    theirs = _node(cluster).GetQuotas
    acme = node(cluster.channel(SOURCE, account=SECOND_ACCOUNT)).GetQuotas
    for call, project, expected in (
        (theirs, f"{SOURCE}_acme", grpc.StatusCode.PERMISSION_DENIED),
        (acme, f"{SOURCE}_default", grpc.StatusCode.PERMISSION_DENIED),
        (theirs, "no-such-project", grpc.StatusCode.NOT_FOUND),
    ):
        asked = qpb.GetQuotasRequest(project_id=project)
        answer = refusal(lambda c=call, r=asked: c(r, timeout=30))  # type: ignore[misc]
        assert answer[0] == expected, (project, answer)
    assert acme(qpb.GetQuotasRequest(), timeout=30).project_id == f"{SOURCE}_acme"


@pytest.mark.parametrize(
    ("project", "quota_type", "quota", "code", "field"),
    [
        ("", "backups", 1, grpc.StatusCode.INVALID_ARGUMENT, "project_id"),
        (f"{SOURCE}_default", "disks", 1, grpc.StatusCode.INVALID_ARGUMENT, "type"),
        (f"{SOURCE}_default", "backups", -2, grpc.StatusCode.INVALID_ARGUMENT, "quota"),
        (
            f"{SOURCE}_default",
            "backup_capacity",
            1 << 62,
            grpc.StatusCode.INVALID_ARGUMENT,
            "quota",
        ),
        (f"{TARGET}_default", "backups", 1, grpc.StatusCode.NOT_FOUND, f"{TARGET}_default"),
    ],
)
def test_bad_quota_input_is_refused_naming_the_field(
    cluster: Cluster, project: str, quota_type: str, quota: int, code: grpc.StatusCode, field: str
) -> None:
    got, details = refusal(lambda: _set_quota(cluster, project, quota_type, quota))
    assert got == code and field in details, (got, details)


def _region_used(cluster: Cluster) -> int:
    answer = RegionNodeAdminStub(cluster.channel(SOURCE)).GetRegionCapacity(
        qpb.GetRegionCapacityRequest(), timeout=30
    )
    return int(answer.used_bytes)


# --- the config's values -----------------------------------------------------------------------


def test_the_configs_quotas_act_at_start_and_an_operators_change_wins_until_the_config_changes(
    tmp_path: Path,
) -> None:
    def configured(backups: int) -> Path:
        regions = _regions(configured_backups=backups)
        regions[0]["capacity_bytes"] = 512 * MIB
        return write_cluster_config(tmp_path, regions=regions[:1])

    def backups_quota() -> int:
        return _quotas(running, CONFIGURED)["backups"].quota

    def capacity() -> tuple[int, bool]:
        answer = RegionNodeAdminStub(running.channel(SOURCE)).GetRegionCapacity(
            qpb.GetRegionCapacityRequest(), timeout=30
        )
        return answer.capacity_bytes, answer.set_by_operator

    with Cluster(configured(backups=1)) as running:
        running.start()
        stub = _node(running)
        quotas = _quotas(running, CONFIGURED)
        assert (quotas["backups"].quota, quotas["backup_capacity"].quota) == (1, 5)
        assert capacity() == (512 * MIB, False)
        server = _server(stub, CONFIGURED, 60)
        backup(stub, server.server_id, project_id=CONFIGURED)
        code, details = refusal(lambda: _create(stub, CONFIGURED, server.server_id))
        assert code == EXHAUSTED and "limit 1, used 1" in details, details

        # A live change is kept across a restart...
        _set_quota(running, CONFIGURED, "backups", 3)
        RegionNodeAdminStub(running.channel(SOURCE)).SetRegionCapacity(
            qpb.SetRegionCapacityRequest(capacity_bytes=GIB_MIB * MIB), timeout=30
        )
        running.node(SOURCE).restart()
        assert backups_quota() == 3
        assert capacity() == (GIB_MIB * MIB, True)
        # ...until the config's value for it is edited: the newer word wins, for that value
        # only (the config's capacity is as it was, so the operator's stays).
        configured(backups=2)
        running.node(SOURCE).restart()
        assert backups_quota() == 2
        assert capacity() == (GIB_MIB * MIB, True)


@pytest.mark.parametrize(
    ("region_keys", "named"),
    [
        ({"capacity_bytes": -1}, "regions[0].capacity_bytes"),
        ({"capacity_bytes": "1GiB"}, "regions[0].capacity_bytes"),
        ({"quotas": {"project": CONFIGURED}}, "regions[0].quotas"),
        ({"quotas": [{"project": "elsewhere"}]}, "regions[0].quotas[0].project"),
        ({"quotas": [{"project": CONFIGURED, "backups": -2}]}, "regions[0].quotas[0].backups"),
        (
            {"quotas": [{"project": CONFIGURED, "backup_capacity_gb": 1.5}]},
            "regions[0].quotas[0].backup_capacity_gb",
        ),
        ({"quotas": [{"project": CONFIGURED, "gigabytes": 1}]}, "regions[0].quotas[0].gigabytes"),
        (
            {"quotas": [{"project": CONFIGURED}, {"project": CONFIGURED}]},
            "regions[0].quotas[1].project",
        ),
    ],
)
def test_a_bad_capacity_or_quota_in_the_config_is_a_config_error_naming_the_key(
    tmp_path: Path, region_keys: dict[str, object], named: str
) -> None:
    region = {**_regions()[0], **region_keys}
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_cluster_config(write_cluster_config(tmp_path, regions=[region]))
