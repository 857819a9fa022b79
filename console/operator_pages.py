"""The operator pages, for a user who also gave the operator credential: each region's
replication capability (R5) and outage, the links between regions, the fault rules of every
process, and the cluster clock. Every call here carries the operator credential; the cluster
checks it, not the console."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from console import formats, i18n
from console.gateway import CliError
from console.web import User, form_number, language, posted, redirect, render, user_of
from csbs.bandwidth import parse_bandwidth
from csbs.cli.operator_client import FaultClient, RegionAdminClient
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import faults_pb2 as fpb
from csbs.v1 import region_node_pb2 as pb

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class RegionRow:
    region: cpb.Region
    outage: pb.RegionOutage | None


def _operator(request: Request) -> User | Response:
    user = user_of(request)
    if not user.session.operator_token:
        refused = i18n.translate(language(request), "operator_only")
        return render(request, "message.html", user, status_code=403, message=refused)
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
            admin = RegionAdminClient(user.api.endpoint(region.region_id))
            outage: pb.RegionOutage | None = admin.outage()
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


def _bandwidth(form: FormData) -> int:
    """The link form's bandwidth as people write it ("100 Mbit/s", "12.5 MB/s", bytes a
    second), read as the config and `csbs link set` read it; empty is unlimited."""
    text = str(form.get("bandwidth") or "").strip()
    try:
        value = parse_bandwidth(text) if text else 0
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if value > formats.UINT64_MAX:
        raise CliError(f"bandwidth {text!r}: more than this cluster can count")
    return value


def _act(form: FormData, user: User, action: str, target: str) -> None:
    """One operator action, by the form's `action` field."""
    coordinator = user.api.coordinator()
    if action == "capability":
        admin = RegionAdminClient(user.api.endpoint(target))
        admin.set_replication_capability(form.get("accepts") == "yes")
    elif action == "outage":
        out = form.get("out") == "yes"
        reason = str(form.get("reason") or "") if out else ""
        RegionAdminClient(user.api.endpoint(target)).set_outage(out, reason)
    elif action == "link":
        coordinator.set_link(
            cpb.Link(
                source_region_id=str(form.get("source") or ""),
                target_region_id=str(form.get("target") or ""),
                bandwidth_bytes_per_second=_bandwidth(form),
                latency_ms=form_number(form, "latency_ms"),
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
            count=form_number(form, "count"),
            delay_ms=form_number(form, "delay_ms"),
        )
        _faults(user, target).add(rule)
    elif action == "clear_fault":
        process, _, rule_id = target.partition(":")
        _faults(user, process).clear(rule_id)
    elif action == "advance":
        coordinator.advance_clock(
            cpb.AdvanceClockRequest(by_seconds=form_number(form, "seconds", formats.UINT64_MAX))
        )
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
