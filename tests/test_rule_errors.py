"""The rules' refusals (csbs.errors): each rule of spec/replication.md that refuses something
has one class, whose message starts with the rule and names the resource, and whose kind is
the status code the rule is refused with."""

from __future__ import annotations

import pytest

from csbs.errors import (
    BackupCannotBeReplicated,
    BackupNotAvailable,
    BackupNotOfCloudServer,
    BackupNotReadyForImage,
    BackupWithoutSystemDisk,
    CsbsError,
    DescriptionTooLong,
    ErrorKind,
    InvalidName,
    PolicyProtectsCloudServersOnly,
    RegionRefusesReplication,
    ReplicaAlreadyExists,
    ReplicaCannotBeReplicated,
    ReplicaCannotBeRestored,
    TargetProjectNotFound,
)

FAILED = ErrorKind.FAILED_PRECONDITION
CASES: list[tuple[CsbsError, str, ErrorKind, str]] = [
    (BackupNotOfCloudServer("b1", "BMS"), "R1a", FAILED, "bare-metal server (BMS)"),
    (PolicyProtectsCloudServersOnly("s1"), "R1a", FAILED, "server s1"),
    (BackupWithoutSystemDisk("b1"), "R1b", FAILED, "system disk"),
    (BackupNotAvailable("b1", "creating"), "R1c", FAILED, "backup b1 is creating"),
    (ReplicaCannotBeReplicated("b1", "north"), "R2", FAILED, "from region north"),
    (ReplicaCannotBeReplicated("b1"), "R2", FAILED, "from another region"),
    (ReplicaCannotBeRestored("b1"), "R2", FAILED, "only be used to create images"),
    (ReplicaAlreadyExists("b1", "south", "j1"), "R3", ErrorKind.ALREADY_EXISTS, "(job j1)"),
    (ReplicaAlreadyExists("b1", "south", "j1", "r1"), "R3", ErrorKind.ALREADY_EXISTS, "(R4a)"),
    (RegionRefusesReplication("south"), "R5", FAILED, "region south"),
    (InvalidName("name", "", 255), "P1", ErrorKind.INVALID_ARGUMENT, "must not be empty"),
    (InvalidName("name", "x" * 256, 255), "P1", ErrorKind.INVALID_ARGUMENT, "256 characters"),
    (InvalidName("name", "a b", 255), "P1", ErrorKind.INVALID_ARGUMENT, "'a b' may contain"),
    (DescriptionTooLong("description", 256, 255), "P2", ErrorKind.INVALID_ARGUMENT, "256"),
    (TargetProjectNotFound("p9", "south"), "P3", ErrorKind.NOT_FOUND, "region south"),
    (BackupNotReadyForImage("b1", "replicating"), "P4", FAILED, "is replicating"),
]


@pytest.mark.parametrize(("error", "rule", "kind", "mention"), CASES, ids=lambda c: str(c)[:40])
def test_each_rule_refusal_names_its_rule(
    error: CsbsError, rule: str, kind: ErrorKind, mention: str
) -> None:
    assert error.message.startswith(f"{rule}: "), error.message
    assert error.kind == kind
    assert mention in error.message, error.message
    assert getattr(error, "rule", rule) == rule


def test_every_r1_and_r2_replication_refusal_is_a_backup_that_cannot_be_replicated() -> None:
    for error in (
        BackupNotOfCloudServer("b1", "BMS"),
        BackupWithoutSystemDisk("b1"),
        BackupNotAvailable("b1", "error"),
        ReplicaCannotBeReplicated("b1"),
    ):
        assert isinstance(error, BackupCannotBeReplicated)
