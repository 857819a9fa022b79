"""Issue 6, isolation: two accounts on one cluster. On every resource type (servers, backups,
images, replication jobs, policies) the other account's IDs are NOT_FOUND, exactly like IDs
that never existed, its projects PERMISSION_DENIED; lists, region info and targets show only
one's own; replication never crosses accounts, nor does deduplication; and nothing the refused
calls touched has changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.coordinator_pb2_grpc import CoordinatorStub
from csbs.v1.region_node_pb2_grpc import RegionNodeStub
from tests.harness import DEFAULT_ACCOUNT, SECOND_ACCOUNT, Cluster
from tests.node_helpers import (
    MIB,
    all_backups,
    all_images,
    all_servers,
    backup,
    disk_sha256,
    make_server,
    node,
    refusal,
    seeded_bytes,
    write,
)
from tests.replication_helpers import follow, replicate, replicated

SOURCE, TARGET = "cn-north-4", "cn-east-3"
DEADLINE = 30.0
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
# The default account's main project in the source region, which the second account names.
THEIRS = f"{SOURCE}_default"


@dataclass(frozen=True)
class World:
    """What the default account owns; the second account tries to reach it."""

    server: pb.Server
    policy_server: pb.Server
    backup: pb.Backup
    image: pb.Image
    job: cpb.ReplicationJob
    policy: cpb.Policy
    disk_sha256: str


def _node(cluster: Cluster, region: str, account: str) -> RegionNodeStub:
    return node(cluster.channel(region, account=account))


def _coordinator(cluster: Cluster, account: str) -> CoordinatorStub:
    return CoordinatorStub(cluster.coordinator_channel(account=account))


@pytest.fixture(scope="module")
def world(coordinated: Cluster) -> World:
    mine = _node(coordinated, SOURCE, DEFAULT_ACCOUNT)
    server = make_server(mine, [2], name="theirs")
    write(mine, server.server_id, 0, 0, seeded_bytes(61, 2 * MIB))
    taken = backup(mine, server.server_id)
    image = mine.CreateImage(pb.CreateImageRequest(backup_id=taken.backup_id), timeout=DEADLINE)
    job = replicated(_coordinator(coordinated, DEFAULT_ACCOUNT), taken.backup_id, SOURCE, TARGET)
    policy_server = make_server(mine, [1], name="protected")
    policy = _coordinator(coordinated, DEFAULT_ACCOUNT).CreatePolicy(
        cpb.CreatePolicyRequest(
            policy=cpb.Policy(
                region_id=SOURCE,
                name="theirs",
                server_ids=[policy_server.server_id],
                backup_schedule=cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=0"),
            )
        ),
        timeout=DEADLINE,
    )
    return World(
        server, policy_server, taken, image, job, policy, disk_sha256(mine, server.server_id, 0)
    )


def _refused(call: Callable[[], object], code: grpc.StatusCode, what: str) -> None:
    got, details = refusal(call)
    assert got == code, f"{what}: {got} ({details!r}), expected {code}"


def test_region_info_and_targets_show_only_the_callers_projects(coordinated: Cluster) -> None:
    for account in (DEFAULT_ACCOUNT, SECOND_ACCOUNT):
        info = _node(coordinated, TARGET, account).GetRegionInfo(
            pb.GetRegionInfoRequest(), timeout=DEADLINE
        )
        assert info.projects and {p.account_id for p in info.projects} == {account}
        targets = _coordinator(coordinated, account).ListReplicationTargets(
            cpb.ListReplicationTargetsRequest(source_region_id=SOURCE), timeout=DEADLINE
        )
        projects = [p for t in targets.targets for p in t.projects]
        assert projects and {p.account_id for p in projects} == {account}


def test_servers_of_another_account_are_not_found(coordinated: Cluster, world: World) -> None:
    acme = _node(coordinated, SOURCE, SECOND_ACCOUNT)
    sid = world.server.server_id

    def calls(project: str) -> dict[str, Callable[[], object]]:
        get = pb.GetServerRequest(project_id=project, server_id=sid)
        return {
            "GetServer": lambda: acme.GetServer(get, timeout=DEADLINE),
            "WatchServer": lambda: acme.WatchServer(get, timeout=DEADLINE),
            "DeleteServer": lambda: acme.DeleteServer(
                pb.DeleteServerRequest(project_id=project, server_id=sid), timeout=DEADLINE
            ),
            "ReadDisk": lambda: acme.ReadDisk(
                pb.ReadDiskRequest(project_id=project, server_id=sid), timeout=DEADLINE
            ),
            "WriteDisk": lambda: acme.WriteDisk(
                iter([pb.WriteDiskRequest(project_id=project, server_id=sid, data=b"x" * 512)]),
                timeout=DEADLINE,
            ),
            "CreateBackup": lambda: acme.CreateBackup(
                pb.CreateBackupRequest(project_id=project, server_id=sid), timeout=DEADLINE
            ),
        }

    for project, code in (("", NOT_FOUND), (f"{SOURCE}_acme", NOT_FOUND), (THEIRS, DENIED)):
        for name, make in calls(project).items():
            _refused(make, code, f"{name} in {project or 'the main project'}")
    assert sid not in {s.server_id for s in all_servers(acme)}
    _refused(
        lambda: acme.ListServers(pb.ListServersRequest(project_id=THEIRS), timeout=DEADLINE),
        DENIED,
        "ListServers",
    )
    _refused(
        lambda: acme.CreateServer(
            pb.CreateServerRequest(project_id=THEIRS, disks=[pb.DiskSpec(size_bytes=MIB)]),
            timeout=DEADLINE,
        ),
        DENIED,
        "CreateServer",
    )


def test_backups_of_another_account_are_not_found(coordinated: Cluster, world: World) -> None:
    acme = _node(coordinated, SOURCE, SECOND_ACCOUNT)
    bid = world.backup.backup_id
    get = pb.GetBackupRequest(backup_id=bid)
    _refused(lambda: acme.GetBackup(get, timeout=DEADLINE), NOT_FOUND, "GetBackup")
    _refused(lambda: acme.WatchBackup(get, timeout=DEADLINE), NOT_FOUND, "WatchBackup")
    _refused(
        lambda: acme.DeleteBackup(pb.DeleteBackupRequest(backup_id=bid), timeout=DEADLINE),
        NOT_FOUND,
        "DeleteBackup",
    )
    _refused(
        lambda: acme.RestoreBackup(pb.RestoreBackupRequest(backup_id=bid), timeout=DEADLINE),
        NOT_FOUND,
        "RestoreBackup",
    )
    _refused(
        lambda: acme.CreateImage(pb.CreateImageRequest(backup_id=bid), timeout=DEADLINE),
        NOT_FOUND,
        "CreateImage",
    )
    _refused(
        lambda: acme.VerifyBackup(pb.VerifyBackupRequest(backup_id=bid), timeout=DEADLINE),
        NOT_FOUND,
        "VerifyBackup",
    )
    _refused(
        lambda: acme.GetBackup(
            pb.GetBackupRequest(project_id=THEIRS, backup_id=bid), timeout=DEADLINE
        ),
        DENIED,
        "GetBackup in their project",
    )
    assert bid not in {b.backup_id for b in all_backups(acme)}
    # The replica in the target region too.
    acme_there = _node(coordinated, TARGET, SECOND_ACCOUNT)
    _refused(
        lambda: acme_there.GetBackup(
            pb.GetBackupRequest(backup_id=world.job.replica_id), timeout=DEADLINE
        ),
        NOT_FOUND,
        "GetBackup of the replica",
    )


def test_images_of_another_account_are_not_found(coordinated: Cluster, world: World) -> None:
    acme = _node(coordinated, SOURCE, SECOND_ACCOUNT)
    iid = world.image.image_id
    _refused(
        lambda: acme.GetImage(pb.GetImageRequest(image_id=iid), timeout=DEADLINE),
        NOT_FOUND,
        "GetImage",
    )
    _refused(
        lambda: acme.DeleteImage(pb.DeleteImageRequest(image_id=iid), timeout=DEADLINE),
        NOT_FOUND,
        "DeleteImage",
    )
    _refused(
        lambda: acme.CreateServer(pb.CreateServerRequest(image_id=iid), timeout=DEADLINE),
        NOT_FOUND,
        "CreateServer from their image",
    )
    assert iid not in {i.image_id for i in all_images(acme)}


def test_jobs_of_another_account_are_not_found(coordinated: Cluster, world: World) -> None:
    acme = _coordinator(coordinated, SECOND_ACCOUNT)
    get = cpb.GetReplicationJobRequest(job_id=world.job.job_id)
    _refused(lambda: acme.GetReplicationJob(get, timeout=DEADLINE), NOT_FOUND, "GetJob")
    _refused(lambda: acme.WatchReplicationJob(get, timeout=DEADLINE), NOT_FOUND, "WatchJob")
    for request in (
        cpb.ListReplicationJobsRequest(),
        cpb.ListReplicationJobsRequest(source_backup_id=world.backup.backup_id),
    ):
        listed = acme.ListReplicationJobs(request, timeout=DEADLINE)
        assert world.job.job_id not in {j.job_id for j in listed.jobs}
    mine = _coordinator(coordinated, DEFAULT_ACCOUNT).ListReplicationJobs(
        cpb.ListReplicationJobsRequest(source_backup_id=world.backup.backup_id), timeout=DEADLINE
    )
    assert world.job.job_id in {j.job_id for j in mine.jobs}


def test_replication_never_crosses_accounts(coordinated: Cluster, world: World) -> None:
    bid = world.backup.backup_id
    acme = _coordinator(coordinated, SECOND_ACCOUNT)
    _refused(lambda: replicate(acme, bid, SOURCE, TARGET), NOT_FOUND, "replicating their backup")
    _refused(
        lambda: replicate(acme, bid, SOURCE, TARGET, source_project_id=THEIRS),
        DENIED,
        "replicating from their project",
    )
    mine = _coordinator(coordinated, DEFAULT_ACCOUNT)
    got, details = refusal(
        lambda: replicate(mine, bid, SOURCE, TARGET, target_project_id=f"{TARGET}_acme")
    )
    assert got == DENIED and details.startswith("P3"), (got, details)


def test_policies_of_another_account_are_not_found(coordinated: Cluster, world: World) -> None:
    acme = _coordinator(coordinated, SECOND_ACCOUNT)
    pid = world.policy.policy_id
    calls: dict[str, Callable[[], object]] = {
        "GetPolicy": lambda: acme.GetPolicy(cpb.GetPolicyRequest(policy_id=pid), timeout=DEADLINE),
        "UpdatePolicy": lambda: acme.UpdatePolicy(
            cpb.UpdatePolicyRequest(
                policy=cpb.Policy(policy_id=pid, name="stolen"), update_fields=["name"]
            ),
            timeout=DEADLINE,
        ),
        "DeletePolicy": lambda: acme.DeletePolicy(
            cpb.DeletePolicyRequest(policy_id=pid), timeout=DEADLINE
        ),
        "AddPolicyServers": lambda: acme.AddPolicyServers(
            cpb.PolicyServersRequest(policy_id=pid, server_ids=[world.server.server_id]),
            timeout=DEADLINE,
        ),
        "RemovePolicyServers": lambda: acme.RemovePolicyServers(
            cpb.PolicyServersRequest(policy_id=pid, server_ids=[world.policy_server.server_id]),
            timeout=DEADLINE,
        ),
        "ExecutePolicy": lambda: acme.ExecutePolicy(
            cpb.ExecutePolicyRequest(policy_id=pid, kind=cpb.POLICY_RUN_KIND_BACKUP),
            timeout=DEADLINE,
        ),
        "ListPolicyRuns": lambda: acme.ListPolicyRuns(
            cpb.ListPolicyRunsRequest(policy_id=pid), timeout=DEADLINE
        ),
    }
    for name, make in calls.items():
        _refused(make, NOT_FOUND, name)
    listed = acme.ListPolicies(cpb.ListPoliciesRequest(), timeout=DEADLINE)
    assert pid not in {p.policy_id for p in listed.policies}
    schedule = cpb.Schedule(rrule="FREQ=DAILY;BYHOUR=4;BYMINUTE=0")
    _refused(
        lambda: acme.CreatePolicy(
            cpb.CreatePolicyRequest(
                policy=cpb.Policy(
                    region_id=SOURCE, project_id=THEIRS, name="x", backup_schedule=schedule
                )
            ),
            timeout=DEADLINE,
        ),
        DENIED,
        "CreatePolicy in their project",
    )
    _refused(
        lambda: acme.CreatePolicy(
            cpb.CreatePolicyRequest(
                policy=cpb.Policy(
                    region_id=SOURCE,
                    name="x",
                    server_ids=[world.server.server_id],
                    backup_schedule=schedule,
                )
            ),
            timeout=DEADLINE,
        ),
        NOT_FOUND,
        "CreatePolicy protecting their server",
    )


def test_the_same_request_id_in_two_accounts_makes_two_resources(coordinated: Cluster) -> None:
    made = [
        _node(coordinated, SOURCE, account).CreateServer(
            pb.CreateServerRequest(disks=[pb.DiskSpec(size_bytes=MIB)], request_id="same-id"),
            timeout=DEADLINE,
        )
        for account in (DEFAULT_ACCOUNT, SECOND_ACCOUNT)
    ]
    assert made[0].server_id != made[1].server_id
    assert made[0].project_id != made[1].project_id


def test_deduplication_never_crosses_accounts(coordinated: Cluster) -> None:
    """The second account already stores some content in the target region; the default
    account replicating the same content is told nothing is held there and sends it all. Its
    own copy, once there, does count for its next replication."""
    content = seeded_bytes(4242, 4 * MIB)
    acme_there = _node(coordinated, TARGET, SECOND_ACCOUNT)
    theirs = make_server(acme_there, [4])
    write(acme_there, theirs.server_id, 0, 0, content)
    backup(acme_there, theirs.server_id)

    mine = _node(coordinated, SOURCE, DEFAULT_ACCOUNT)
    coordinator = _coordinator(coordinated, DEFAULT_ACCOUNT)
    jobs = []
    for _ in range(2):
        server = make_server(mine, [4])
        write(mine, server.server_id, 0, 0, content)
        taken = backup(mine, server.server_id)
        job = replicate(coordinator, taken.backup_id, SOURCE, TARGET)
        jobs.append(follow(coordinator, job.job_id)[-1])
    first, second = (j.progress for j in jobs)
    assert jobs[0].status == cpb.REPLICATION_JOB_STATUS_SUCCESS, jobs[0].failure_reason
    assert (first.chunks_planned, first.chunks_skipped, first.bytes_skipped) == (4, 0, 0)
    assert first.chunks_sent == 4 and first.bytes_sent >= len(content)
    assert (second.chunks_skipped, second.chunks_sent) == (4, 0)


def test_nothing_of_the_default_account_changed(coordinated: Cluster, world: World) -> None:
    """Runs after the refusals above (module order): everything is as it was."""
    mine = _node(coordinated, SOURCE, DEFAULT_ACCOUNT)
    server = mine.GetServer(pb.GetServerRequest(server_id=world.server.server_id), timeout=DEADLINE)
    assert server.status == pb.SERVER_STATUS_ACTIVE
    assert disk_sha256(mine, world.server.server_id, 0) == world.disk_sha256
    taken = mine.GetBackup(pb.GetBackupRequest(backup_id=world.backup.backup_id), timeout=DEADLINE)
    assert taken.status == pb.BACKUP_STATUS_AVAILABLE
    assert list(taken.image_ids) == [world.image.image_id]
    coordinator = _coordinator(coordinated, DEFAULT_ACCOUNT)
    policy = coordinator.GetPolicy(
        cpb.GetPolicyRequest(policy_id=world.policy.policy_id), timeout=DEADLINE
    )
    assert policy.name == "theirs" and list(policy.server_ids) == [world.policy_server.server_id]
    runs = coordinator.ListPolicyRuns(
        cpb.ListPolicyRunsRequest(policy_id=world.policy.policy_id), timeout=DEADLINE
    )
    assert list(runs.runs) == []
    job = coordinator.GetReplicationJob(
        cpb.GetReplicationJobRequest(job_id=world.job.job_id), timeout=DEADLINE
    )
    assert job.status == cpb.REPLICATION_JOB_STATUS_SUCCESS
