"""Every Python enum that mirrors a .proto enum has the proto's names and numbers, so that a
change to a .proto cannot silently drift from the code that stores, converts or compares its
values. A mirror may leave out UNSPECIFIED (a stored value is never unspecified); it has every
other value of its proto enum, and nothing else."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

import pytest

import coordinator.models as coordinator_models
import coordinator.policy_models as policy_models
import csbs.node_views as node_clients
import region_node.models as node_models
from csbs.cli import backup as cli_backup
from csbs.cli import job as cli_job
from csbs.cli import server as cli_server
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb

# A generated enum (its stubs type each one as a class of its own).
ProtoEnum = Any


def _prefix(proto: ProtoEnum) -> str:
    """The prefix of a proto enum's value names: ReplicationJobStatus -> REPLICATION_JOB_STATUS_."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", proto.DESCRIPTOR.name).upper() + "_"


def _members(python: type[enum.IntEnum]) -> dict[str, int]:
    return {member.name: int(member.value) for member in python}


# (what mirrors it, its names -> numbers, the proto enum)
MIRRORS: list[tuple[str, Mapping[str, int], ProtoEnum]] = [
    ("region_node.models.ServerType", _members(node_models.ServerType), common_pb2.ServerType),
    ("region_node.models.ServerStatus", _members(node_models.ServerStatus), pb.ServerStatus),
    ("region_node.models.BackupStatus", _members(node_models.BackupStatus), pb.BackupStatus),
    (
        "region_node.models.ReplicationWay",
        _members(node_models.ReplicationWay),
        common_pb2.ReplicationWay,
    ),
    (
        "region_node.models.RecordStatus",
        _members(node_models.RecordStatus),
        pb.ReplicationRecordStatus,
    ),
    ("csbs.node_views.ServerType", _members(node_clients.ServerType), common_pb2.ServerType),
    ("csbs.node_views.BackupStatus", _members(node_clients.BackupStatus), pb.BackupStatus),
    (
        "csbs.node_views.ReplicationWay",
        _members(node_clients.ReplicationWay),
        common_pb2.ReplicationWay,
    ),
    (
        "csbs.node_views.RecordStatus",
        _members(node_clients.RecordStatus),
        pb.ReplicationRecordStatus,
    ),
    (
        "coordinator.models.JobStatus",
        _members(coordinator_models.JobStatus),
        cpb.ReplicationJobStatus,
    ),
    (
        "coordinator.policy_models run kinds",
        {"BACKUP": policy_models.KIND_BACKUP, "REPLICATION": policy_models.KIND_REPLICATION},
        cpb.PolicyRunKind,
    ),
    (
        "coordinator.policy_models run triggers",
        {
            "SCHEDULE": policy_models.TRIGGER_SCHEDULE,
            "EXECUTE_NOW": policy_models.TRIGGER_EXECUTE_NOW,
        },
        cpb.PolicyRunTrigger,
    ),
    (
        "coordinator.policy_models run statuses",
        {
            "RUNNING": policy_models.RUNNING,
            "FINISHED": policy_models.FINISHED,
            "SKIPPED": policy_models.SKIPPED,
            "FAILED": policy_models.FAILED,
        },
        cpb.PolicyRunStatus,
    ),
]


@pytest.mark.parametrize(("mirror", "names", "proto"), MIRRORS, ids=[m[0] for m in MIRRORS])
def test_python_enum_has_the_proto_enums_names_and_numbers(
    mirror: str, names: Mapping[str, int], proto: ProtoEnum
) -> None:
    prefix = _prefix(proto)
    expected = {name.removeprefix(prefix): number for name, number in proto.items()}
    assert all(name.startswith(prefix) for name, _ in proto.items()), list(proto.items())
    got = dict(names)
    if "UNSPECIFIED" not in got:
        del expected["UNSPECIFIED"]
    assert got == expected, f"{mirror} differs from {proto.DESCRIPTOR.full_name}"


# The command line's choices (lower-case words) -> the proto values they ask for.
CHOICES: list[tuple[str, Mapping[Any, int], ProtoEnum]] = [
    ("csbs backup list --status", cli_backup._STATUSES, pb.BackupStatus),
    ("csbs job list --status", cli_job._STATUSES, cpb.ReplicationJobStatus),
    ("csbs server create --type", cli_server._SERVER_TYPES, common_pb2.ServerType),
]


@pytest.mark.parametrize(("option", "choices", "proto"), CHOICES, ids=[c[0] for c in CHOICES])
def test_command_line_choices_name_every_proto_value(
    option: str, choices: Mapping[Any, int], proto: ProtoEnum
) -> None:
    prefix = _prefix(proto)
    expected = {
        name.removeprefix(prefix).lower(): number for name, number in proto.items() if number != 0
    }
    assert {choice.value: number for choice, number in choices.items()} == expected, option


def test_a_proto_change_would_be_seen() -> None:
    """The check itself: a mirror with a number moved, or a value missing, differs."""
    prefix = _prefix(pb.BackupStatus)
    expected = {name.removeprefix(prefix): n for name, n in pb.BackupStatus.items()}
    moved = {**_members(node_clients.BackupStatus), "RESTORING": 6}
    assert moved != expected
    missing = _members(node_clients.BackupStatus)
    del missing["RESTORING"]
    assert missing != expected
