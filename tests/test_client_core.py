"""The client core (csbs.client_core) without processes: what a status code means, which codes
each caller retries, gRPC's own busy limit, and paging to the end."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from csbs.cli.client import RETRIES as CLI_RETRIES
from csbs.client_core import BUSY_SERVER, ClientCore, Failure, Retries
from csbs.clients import RETRIES as COORDINATOR_RETRIES
from csbs.clients import NodeError, NodeNotFound, failure_error
from csbs.errors import (
    AlreadyExists,
    ErrorKind,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from csbs.v1 import region_node_pb2 as pb


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Answers:
    """A stub method answering with the given outcomes in turn (an exception is raised)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append((request, kwargs))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.code.name)
        self.failure = failure


def core(busy_is_unavailable: bool = False, attempts: int = 3) -> ClientCore:
    return ClientCore(
        retries=Retries(attempts=attempts, max_wait=0.0),
        to_error=lambda failure, _timeout: Failed(failure),
        busy_is_unavailable=busy_is_unavailable,
    )


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
BUSY = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{BUSY_SERVER}: 256")


def test_an_idempotent_call_is_retried_while_unavailable() -> None:
    method = Answers(UNAVAILABLE, UNAVAILABLE, "answer")
    assert core().unary(method, "request", timeout=1.0, retry=True) == "answer"
    assert [kw["timeout"] for _, kw in method.calls] == [1.0, 1.0, 1.0]


def test_retries_stop_after_the_attempts_with_the_last_failure() -> None:
    method = Answers(UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, "never")
    with pytest.raises(Failed) as failed:
        core().unary(method, "request", timeout=1.0, retry=True)
    assert failed.value.failure == Failure(grpc.StatusCode.UNAVAILABLE, "down")
    assert len(method.calls) == 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_a_refusal_or_a_timeout_is_never_retried(code: grpc.StatusCode) -> None:
    method = Answers(FakeRpcError(code, "no"), "never")
    with pytest.raises(Failed):
        core().unary(method, "request", timeout=1.0, retry=True)
    assert len(method.calls) == 1


def test_a_call_that_is_not_idempotent_is_tried_once() -> None:
    method = Answers(UNAVAILABLE, "never")
    with pytest.raises(Failed):
        core().unary(method, "request", timeout=1.0)
    assert len(method.calls) == 1


def test_grpc_busy_limit_passes_for_the_coordinator_but_not_for_the_command_line() -> None:
    assert core(busy_is_unavailable=True).unary(Answers(BUSY, "ok"), "r", timeout=1, retry=True)
    with pytest.raises(Failed) as failed:
        core().unary(Answers(BUSY, "never"), "r", timeout=1, retry=True)
    assert failed.value.failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_each_caller_keeps_its_retry_budget() -> None:
    assert (COORDINATOR_RETRIES.attempts, COORDINATOR_RETRIES.max_wait) == (4, 1.0)
    assert (CLI_RETRIES.attempts, CLI_RETRIES.max_wait) == (3, 0.5)
    assert COORDINATOR_RETRIES.codes == CLI_RETRIES.codes == {grpc.StatusCode.UNAVAILABLE}


def test_a_node_refusal_keeps_its_words_and_names_the_region() -> None:
    for code, kind in [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    ]:
        error = failure_error("eu-1", Failure(code, "R2: no"))
        assert type(error) is kind
        assert error.message == "R2: no (in region eu-1)"
    not_found = failure_error("eu-1", Failure(grpc.StatusCode.NOT_FOUND, "backup 'b' not found"))
    assert isinstance(not_found, NodeNotFound)
    assert not_found.message == "backup 'b' not found (in region eu-1)"


def test_a_node_that_cannot_serve_is_a_node_error_by_its_meaning() -> None:
    internal = failure_error("eu-1", Failure(grpc.StatusCode.INTERNAL, "bug"))
    assert isinstance(internal, NodeError)
    assert (internal.kind, internal.transient) == (ErrorKind.UNAVAILABLE, False)
    lost = failure_error("eu-1", Failure(grpc.StatusCode.DATA_LOSS, "bad chunk"))
    assert isinstance(lost, NodeError)
    assert (lost.kind, lost.transient) == (ErrorKind.DATA_LOSS, False)
    aborted = failure_error("eu-1", Failure(grpc.StatusCode.ABORTED, "cut"))
    assert isinstance(aborted, NodeError) and aborted.transient


def test_list_all_pages_to_the_end_without_changing_the_request() -> None:
    method = Answers(
        pb.ListBackupsResponse(backups=[pb.Backup(backup_id="a")], next_page_token="t1"),
        pb.ListBackupsResponse(backups=[pb.Backup(backup_id="b")], next_page_token=""),
    )
    request = pb.ListBackupsRequest(project_id="p")
    found = core().list_all(method, request, "backups", timeout=1.0)
    assert [b.backup_id for b in found] == ["a", "b"]
    assert [(r.page_token, r.page_size, r.project_id) for r, _ in method.calls] == [
        ("", 1000, "p"),
        ("t1", 1000, "p"),
    ]
    assert request.page_token == "" and request.page_size == 0
