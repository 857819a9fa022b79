"""The operator pages, for a user who also gave the operator credential: each region's
replication capability (R5) and outage, the links between regions, the fault rules of every
process, and the cluster clock. Every call here carries the operator credential; the cluster
checks it, not the console."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from console.gateway import CliError
from console.web import User, posted, redirect, render, user_of
from csbs.cli.operator_client import FaultClient, OutageClient
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb
from csbs.v1.region_node_pb2_grpc import RegionNodeAdminStub

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class RegionRow:
    region: cpb.Region
    outage: pb.RegionOutage | None


def _operator(request: Request) -> User | Response:
    user = user_of(request)
    if not user.session.operator_token:
        return render(request, "message.html", user, status_code=403, message="operator only")
    return user


def _faults(user: User, process: str) -> FaultClient:
    if process == COORDINATOR:
        return FaultClient(process, user.api.coordinator().endpoint)
    return FaultClient(process, user.api.endpoint(process))


def operator_page(request: Request) -> Response:
    user = _operator(request)
    if isinstance(user, Response):
        return user
    errors: list[str] = []
    rows: list[RegionRow] = []
    for region in user.api.regions():
        try:
            outage: pb.RegionOutage | None = OutageClient(user.api.endpoint(region.region_id)).get()
        except CliError as exc:
            outage = None
            errors.append(exc.message)
        rows.append(RegionRow(region, outage))
    coordinator = user.api.coordinator()
    links: list[cpb.Link] = []
    clock: cpb.ClockState | None = None
    try:
        links = coordinator.list_links()
        clock = coordinator.get_clock()
    except CliError as exc:
        errors.append(exc.message)
    rules: list[tuple[str, fpb.FaultRule]] = []
    for process in [COORDINATOR, *(r.region.region_id for r in rows)]:
        try:
            rules += [(process, rule) for rule in _faults(user, process).list()]
        except CliError as exc:
            errors.append(exc.message)
    return render(
        request,
        "operator.html",
        user,
        rows=rows,
        links=links,
        clock=clock,
        rules=rules,
        processes=[COORDINATOR, *(r.region.region_id for r in rows)],
        errors=errors,
    )


def _number(form: FormData, key: str) -> int:
    text = str(form.get(key) or "").strip()
    return int(text) if text.isdigit() else 0


def _act(form: FormData, user: User, action: str, target: str) -> None:
    """One operator action, by the form's `action` field."""
    coordinator = user.api.coordinator()
    if action == "capability":
        endpoint = user.api.endpoint(target)
        request = pb.SetReplicationCapabilityRequest(
            accepts_replication=form.get("accepts") == "yes"
        )
        admin = RegionNodeAdminStub(endpoint.channel)
        endpoint.unary(admin.SetReplicationCapability, request, operator=True, retry=True)
    elif action == "outage":
        out = form.get("out") == "yes"
        reason = str(form.get("reason") or "") if out else ""
        OutageClient(user.api.endpoint(target)).set(out, reason)
    elif action == "link":
        coordinator.set_link(
            cpb.Link(
                source_region_id=str(form.get("source") or ""),
                target_region_id=str(form.get("target") or ""),
                bandwidth_bytes_per_second=_number(form, "bandwidth"),
                latency_ms=_number(form, "latency_ms"),
                cut=form.get("cut") == "on",
            )
        )
    elif action == "clear_link":
        source, _, target_region = target.partition(">")
        coordinator.clear_link(source, target_region)
    elif action == "fault":
        rule = fpb.FaultRule(
            method=str(form.get("method") or ""),
            code=str(form.get("code") or ""),
            count=_number(form, "count"),
            delay_ms=_number(form, "delay_ms"),
        )
        _faults(user, target).add(rule)
    elif action == "clear_fault":
        process, _, rule_id = target.partition(":")
        _faults(user, process).clear(rule_id)
    elif action == "advance":
        coordinator.advance_clock(cpb.AdvanceClockRequest(by_seconds=_number(form, "seconds")))
    else:
        raise CliError(f"unknown operator action {action!r}")


@posted
def operator_action(request: Request, form: FormData) -> Response:
    user = _operator(request)
    if isinstance(user, Response):
        return user
    action = str(form.get("action") or "")
    target = str(form.get("target") or "")
    try:
        _act(form, user, action, target)
    except CliError as exc:
        return render(request, "message.html", user, status_code=409, message=exc.message)
    finally:
        user.session.catalog.clear()  # a region's capability may have changed
    return redirect(request, "/operator")
