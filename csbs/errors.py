"""The domain error hierarchy, in the product's words. Nothing here knows gRPC: `csbs.rpc`
maps each kind to a status code in one table."""

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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CsbsError):
    kind = ErrorKind.INVALID_ARGUMENT


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
    """A region's storage has no room for what a call wanted to write. Nothing acknowledged is
    lost and nothing half-written is kept; deleting still works, to make room."""

    def __init__(self, region_id: str, what: str) -> None:
        super().__init__(
            f"region {region_id} has no storage space left for {what}; delete backups, "
            "images or servers there to make room, or try again once space is added"
        )
        self.region_id = region_id


class Unavailable(CsbsError):
    kind = ErrorKind.UNAVAILABLE


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
    def __init__(self, backup_id: str) -> None:
        super().__init__("backup", backup_id)


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


class BackupCannotBeReplicated(FailedPrecondition):
    """A rule of R1 or R2 keeps a backup from being replicated; the message starts with it."""

    def __init__(self, rule: str, why: str) -> None:
        super().__init__(f"{rule}: {why}")
        self.rule = rule


class RegionRefusesReplication(FailedPrecondition):
    """R5: the target region does not advertise replication capability."""

    def __init__(self, region_id: str) -> None:
        super().__init__(
            f"R5: region {region_id} does not accept replication; only regions that advertise "
            "replication capability can be targets"
        )
        self.region_id = region_id


class TargetProjectNotFound(NotFound):
    """P3: the project asked for is not one of the caller's projects in the target region."""

    def __init__(self, project_id: str, region_id: str) -> None:
        CsbsError.__init__(
            self, f"P3: project {project_id!r} is not one of your projects in region {region_id}"
        )
        self.resource = "project"
        self.resource_id = project_id


class ReplicaAlreadyExists(AlreadyExists):
    """R3: a target region holds at most one replica of a source backup at a time."""
