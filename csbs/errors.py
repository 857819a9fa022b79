"""The domain error hierarchy, in the product's words. Nothing here knows gRPC: `csbs.rpc`
maps each kind to a status code in one table. Each rule of spec/replication.md that refuses
something has its class here (R1a to R5, P1 to P4), and its message is built in that class
only, starting with the rule."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"


class CsbsError(Exception):
    """A refusal a user can act on; the message names the rule or the field."""

    kind: ErrorKind = ErrorKind.FAILED_PRECONDITION
    # Made on purpose for the simulated world (a region outage, issue 13): the answer says so.
    simulated = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CsbsError):
    kind = ErrorKind.INVALID_ARGUMENT


def required(value: str, field: str) -> str:
    """`value` of a field a call cannot do without; an empty one is refused naming the field
    (not looked up and answered NOT_FOUND for '')."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value


class NotFound(CsbsError):
    kind = ErrorKind.NOT_FOUND

    def __init__(self, resource: str, resource_id: str) -> None:
        super().__init__(f"{resource} {resource_id!r} not found")
        self.resource = resource
        self.resource_id = resource_id


class AlreadyExists(CsbsError):
    kind = ErrorKind.ALREADY_EXISTS


class FailedPrecondition(CsbsError):
    kind = ErrorKind.FAILED_PRECONDITION


class PermissionDenied(CsbsError):
    kind = ErrorKind.PERMISSION_DENIED


class Unauthenticated(CsbsError):
    kind = ErrorKind.UNAUTHENTICATED


class ResourceExhausted(CsbsError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class StorageFull(ResourceExhausted):
    """A region's storage has no room for what a call wanted to write: its filesystem is full,
    or its chunk store is at the capacity the operator gave it (`why` then names the capacity
    and its use). Nothing acknowledged is lost and nothing half-written is kept; deleting still
    works, to make room."""

    def __init__(self, region_id: str, what: str, why: str = "") -> None:
        if why:
            advice = (
                f": {why}; delete backups or replicas there to make room, or ask the operator "
                "to raise the region's capacity"
            )
        else:
            advice = (
                "; delete backups, images or servers there to make room, or try again once "
                "space is added"
            )
        super().__init__(f"region {region_id} has no storage space left for {what}{advice}")
        self.region_id = region_id


def bytes_text(n: int) -> str:
    """Bytes as a message names them: `64 MiB (67108864 bytes)`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            shown = f"{value:.1f}".removesuffix(".0")
            return f"{n} bytes" if unit == "B" else f"{shown} {unit} ({n} bytes)"
        value /= 1024
    raise AssertionError("unreachable")


class QuotaExceeded(ResourceExhausted):
    """A backup or replica that would take a project beyond one of its quotas (`backups`,
    `backup_capacity`): the message names the quota, its limit and its use."""

    def __init__(self, project_id: str, quota_type: str, limit: str, used: str, more: str) -> None:
        super().__init__(
            f"quota {quota_type} of project {project_id}: limit {limit}, used {used}{more}; "
            "delete backups or replicas of the project, or ask the operator for a higher quota"
        )
        self.project_id = project_id
        self.quota_type = quota_type


class Unavailable(CsbsError):
    kind = ErrorKind.UNAVAILABLE


class RegionOut(Unavailable):
    """A region outage (issue 13): the operator put the region out; it answers users and the
    coordinator again once brought back."""

    simulated = True

    def __init__(self, region_id: str, reason: str) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(
            f"region {region_id} is out{because} (a region outage: it answers again once the "
            "operator brings it back)"
        )
        self.region_id = region_id


class ChunkCorrupted(CsbsError):
    """A stored chunk does not match its hash, or is missing: never hand out wrong bytes.
    `digest` names the chunk when one is known, so that the backups holding it are marked."""

    kind = ErrorKind.DATA_LOSS

    def __init__(self, message: str, digest: bytes = b"") -> None:
        super().__init__(message)
        self.digest = digest


class ServerNotFound(NotFound):
    def __init__(self, server_id: str) -> None:
        super().__init__("server", server_id)


class BackupNotFound(NotFound):
    def __init__(self, backup_id: str, project_id: str | None = None) -> None:
        super().__init__("backup", backup_id)
        if project_id:
            # Which project was searched (issue 14): a backup of another project of the same
            # account is found by naming that project.
            self.message = f"backup {backup_id!r} not found in project {project_id}"


class ImageNotFound(NotFound):
    def __init__(self, image_id: str) -> None:
        super().__init__("image", image_id)


class ProjectNotFound(NotFound):
    def __init__(self, project_id: str) -> None:
        super().__init__("project", project_id)


class RegionNotFound(NotFound):
    def __init__(self, region_id: str) -> None:
        super().__init__("region", region_id)


class ReplicationJobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__("replication job", job_id)


# --- the rules' refusals (spec/replication.md), each worded here once, naming its rule ---------


class BackupCannotBeReplicated(FailedPrecondition):
    """A rule of R1 or R2 keeps a backup from being replicated; the message starts with it."""

    def __init__(self, rule: str, why: str) -> None:
        super().__init__(f"{rule}: {why}")
        self.rule = rule


class ReplicaCannotBeReplicated(BackupCannotBeReplicated):
    """R2: a backup replicated in from another region is never replicated again."""

    def __init__(self, backup_id: str, source_region_id: str = "") -> None:
        source = f"region {source_region_id}" if source_region_id else "another region"
        super().__init__(
            "R2",
            f"backup {backup_id} was replicated in from {source}; a replica cannot be "
            "replicated again",
        )


class ReplicaCannotBeRestored(FailedPrecondition):
    """R2: a replica only makes images; it never restores a server."""

    def __init__(self, backup_id: str) -> None:
        super().__init__(
            f"R2: backup {backup_id} was replicated in from another region; a replica can only "
            "be used to create images, not to restore a server"
        )
        self.rule = "R2"


_SERVER_KINDS = {"BMS": "a bare-metal server (BMS)", "UNSPECIFIED": "no known kind of server"}


class BackupNotOfCloudServer(BackupCannotBeReplicated):
    """R1a: only a backup of an elastic cloud server (ECS) is replicated. `server_type`: the
    ServerType name of what it was made from."""

    def __init__(self, backup_id: str, server_type: str) -> None:
        kind = _SERVER_KINDS.get(server_type, server_type)
        super().__init__(
            "R1a",
            f"backup {backup_id} was made from {kind}; only backups of elastic cloud servers "
            "(ECS) can be replicated",
        )


class PolicyProtectsCloudServersOnly(FailedPrecondition):
    """R1a, as a policy keeps it: a policy protects elastic cloud servers (ECS) only, so that
    every backup it makes can be replicated."""

    def __init__(self, server_id: str) -> None:
        super().__init__(
            f"R1a: server {server_id} is a bare-metal server; a policy protects elastic cloud "
            "servers (ECS) only"
        )
        self.rule = "R1a"
        self.server_id = server_id


class BackupWithoutSystemDisk(BackupCannotBeReplicated):
    """R1b: only a backup that includes its server's system disk is replicated."""

    def __init__(self, backup_id: str) -> None:
        super().__init__(
            "R1b",
            f"backup {backup_id} does not include its server's system disk; only a backup "
            "that includes the system disk can be replicated",
        )


class BackupNotAvailable(BackupCannotBeReplicated):
    """R1c: only an available backup is replicated. `status`: the backup's status, in words."""

    def __init__(self, backup_id: str, status: str) -> None:
        super().__init__(
            "R1c",
            f"backup {backup_id} is {status}; only an available backup can be replicated",
        )


class ReplicaAlreadyExists(AlreadyExists):
    """R3: a target region holds at most one replica of a source backup at a time, and a
    replication in flight counts. With `replica_id` the region holds it already (R4a: deleting
    it allows a manual replication again); without, job `job_id` is copying it there."""

    def __init__(self, backup_id: str, region_id: str, job_id: str, replica_id: str = "") -> None:
        if replica_id:
            why = (
                f"R3: region {region_id} already holds replica {replica_id} of backup "
                f"{backup_id} (job {job_id}); a region holds at most one replica of a backup. "
                "Delete that replica to replicate the backup there again (R4a)"
            )
        else:
            why = (
                f"R3: backup {backup_id} is already being replicated to region {region_id} "
                f"(job {job_id}); a region holds at most one replica of a backup"
            )
        super().__init__(why)
        self.rule = "R3"


class RegionRefusesReplication(FailedPrecondition):
    """R5: the target region does not advertise replication capability."""

    def __init__(self, region_id: str) -> None:
        super().__init__(
            f"R5: region {region_id} does not accept replication; only regions that advertise "
            "replication capability can be targets"
        )
        self.rule = "R5"
        self.region_id = region_id


class InvalidName(InvalidArgument):
    """P1: a name is 1 to `max_length` Chinese characters (CJK U+4E00-U+9FFF), English letters,
    digits, '_' and '-'."""

    def __init__(self, field: str, value: str, max_length: int) -> None:
        if not value:
            why = "must not be empty"
        elif len(value) > max_length:
            why = f"has {len(value)} characters, at most {max_length} are allowed"
        else:
            why = (
                f"{value!r} may contain only Chinese characters, English letters, digits, "
                "'_' and '-'"
            )
        super().__init__(f"P1: {field} {why}")
        self.rule = "P1"
        self.field = field


class DescriptionTooLong(InvalidArgument):
    """P2: a description has at most `max_length` characters."""

    def __init__(self, field: str, length: int, max_length: int) -> None:
        super().__init__(f"P2: {field} has {length} characters, at most {max_length} are allowed")
        self.rule = "P2"
        self.field = field


class TargetProjectNotFound(NotFound):
    """P3: the project asked for is not one of the caller's projects in the target region."""

    def __init__(self, project_id: str, region_id: str) -> None:
        CsbsError.__init__(
            self, f"P3: project {project_id!r} is not one of your projects in region {region_id}"
        )
        self.resource = "project"
        self.resource_id = project_id
        self.rule = "P3"


class ProjectOfAnotherAccount(PermissionDenied):
    """P3 and issue 6: a project named in a request is another account's; `field` names the
    request's field (and, for a replication's target, the rule)."""

    def __init__(self, field: str, project_id: str, region_id: str) -> None:
        super().__init__(
            f"{field}: project {project_id} in region {region_id} is not a project of your account"
        )
        self.field = field


class BackupNotReadyForImage(FailedPrecondition):
    """P4: an image is made only from a whole backup; never from a replica still being copied.
    `status`: the backup's status, in words."""

    def __init__(self, backup_id: str, status: str) -> None:
        super().__init__(
            f"P4: backup {backup_id} is {status}; an image can be created only from an "
            "available backup"
        )
        self.rule = "P4"
