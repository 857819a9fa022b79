"""The coordinator's own domain errors, beside those every process shares (csbs/errors.py);
each is one of those kinds, so csbs.rpc maps it to its status code unchanged."""

from __future__ import annotations

from csbs.errors import FailedPrecondition, InvalidArgument


class IdempotencyTokenReused(InvalidArgument):
    """An idempotency token (or request ID) names an earlier request, and this one asks for
    something else: answering with the earlier resource would hide the difference."""

    def __init__(
        self,
        token_field: str,
        token: str,
        resource_id: str,
        resource: str,
        name: str,
        first: object,
        now: object,
    ) -> None:
        super().__init__(
            f"{token_field} {token!r} was already used for {resource} {resource_id} with "
            f"{name} {first!r}; this request gives {name} {now!r}. Repeat the first request's "
            f"parameters to get {resource} {resource_id} again, or use a new {token_field} for "
            "another one"
        )
        self.token = token
        self.parameter = name


class ServerInAnotherPolicy(FailedPrecondition):
    """A server is protected by at most one policy."""

    def __init__(self, server_id: str, policy_id: str) -> None:
        super().__init__(
            f"server {server_id} is already protected by policy {policy_id}; a server belongs "
            "to at most one policy"
        )
        self.server_id = server_id
        self.policy_id = policy_id
