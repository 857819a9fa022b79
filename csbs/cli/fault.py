"""`csbs fault`: fault rules on any process of the cluster (issue 13), for rehearsing what your
tooling does when calls fail or slow down: add one, list them with their counters, clear them.
Operator calls. Rules live in the process's memory: a restart of the process forgets them (the
cluster config's [faults] rules come back with it)."""

from __future__ import annotations

from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import CliError, Refused, UsageError
from csbs.cli.operator_client import FaultClient
from csbs.cli.output import Printer
from csbs.faults import COORDINATOR_PROCESS
from csbs.v1 import faults_pb2 as fpb

app = typer.Typer(
    help="Fault rules on any process: fail or delay the calls of chosen methods (operator)."
)

ProcessOption = Annotated[
    str | None,
    typer.Option(
        "--process",
        metavar="PROCESS",
        help="coordinator, or a region's ID (default: every process of the cluster)",
    ),
]


def processes(session: Session, process: str | None) -> list[str]:
    """The processes a command acts on: the one named, or all (the coordinator first)."""
    every = [COORDINATOR_PROCESS, *session.region_ids]
    if process is None:
        return every
    if process not in every:
        raise UsageError(
            f"--process: {COORDINATOR_PROCESS} or a region of the cluster "
            f"({', '.join(session.region_ids)}), got {process!r}"
        )
    return [process]


def client(session: Session, process: str) -> FaultClient:
    if process == COORDINATOR_PROCESS:
        return FaultClient(process, session.coordinator().endpoint)
    return FaultClient(process, session.region(process).endpoint)


def print_rule(out: Printer, rule: fpb.FaultRule) -> None:
    out.fields(
        [
            ("Rule", rule.rule_id),
            ("Process", rule.process),
            ("Method", rule.method),
            ("Fails with", f"{rule.code}: {rule.message}" if rule.code else "nothing (delay only)"),
            ("Delay", f"{rule.delay_ms} ms" if rule.delay_ms else ""),
            ("Count", count_text(rule)),
            ("Probability", probability_text(rule)),
            ("Matched", f"{rule.calls_matched} calls, {rule.calls_failed} failed"),
        ]
    )


def count_text(rule: fpb.FaultRule) -> str:
    return f"{rule.count} ({rule.remaining} remaining)" if rule.count else "no limit"


def probability_text(rule: fpb.FaultRule) -> str:
    return f"{rule.probability:g} (seed {rule.seed})" if rule.probability < 1 else "1"


@command(app, "add")
def add(
    session: Session,
    process: Annotated[
        str, typer.Option("--process", metavar="PROCESS", help="coordinator, or a region's ID")
    ],
    method: Annotated[
        str,
        typer.Option(
            help="A full method name (/csbs.v1.RegionNode/CreateImage or "
            "csbs.v1.RegionNode.CreateImage) or a glob (*/CreateImage, /csbs.v1.RegionNode/*)"
        ),
    ],
    code: Annotated[
        str,
        typer.Option(
            help="The status code the calls fail with, such as UNAVAILABLE (empty: only delay)"
        ),
    ] = "",
    message: Annotated[
        str, typer.Option(help="The failed calls' message (default: says it is injected)")
    ] = "",
    count: Annotated[
        int, typer.Option(help="Act on this many calls, then go (0: no limit)", min=0)
    ] = 0,
    probability: Annotated[
        float | None,
        typer.Option(help="Act on a matching call with this chance, 0 < P <= 1 (default 1)"),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the draws, so that a run repeats exactly", min=0)
    ] = 0,
    delay_ms: Annotated[
        int, typer.Option("--delay-ms", help="Delay each call it acts on by this much", min=0)
    ] = 0,
) -> None:
    """Add a fault rule to a process: the calls of the methods it names fail with CODE (or are
    only delayed), for COUNT calls or with a seeded PROBABILITY."""
    (target,) = processes(session, process)
    request = fpb.FaultRule(
        method=method, code=code, message=message, count=count, seed=seed, delay_ms=delay_ms
    )
    if probability is not None:
        request.probability = probability
    rule = client(session, target).add(request)
    session.out.show(rule, lambda: print_rule(session.out, rule))


@command(app, "list")
def list_rules(session: Session, process: ProcessOption = None) -> None:
    """The fault rules each process holds, in the order they are tried, with their counters."""
    found: list[fpb.FaultRule] = []
    failed: list[str] = []
    for name in processes(session, process):
        try:
            found += client(session, name).list()
        except CliError as exc:
            if process is not None:
                raise
            failed.append(f"{name}: {exc.message}")

    def human() -> None:
        session.out.table(
            (
                "PROCESS",
                "ID",
                "METHOD",
                "CODE",
                "DELAY",
                "COUNT",
                "PROBABILITY",
                "MATCHED",
                "FAILED",
            ),
            (
                (
                    r.process,
                    r.rule_id,
                    r.method,
                    r.code or "-",
                    f"{r.delay_ms} ms" if r.delay_ms else "-",
                    count_text(r),
                    probability_text(r),
                    str(r.calls_matched),
                    str(r.calls_failed),
                )
                for r in found
            ),
            empty="no fault rules",
        )

    session.out.show_list(found, human)
    for line in failed:
        session.out.hint(f"not listed: {line}")


@command(app, "clear")
def clear(
    session: Session,
    rule_id: Annotated[
        str | None, typer.Argument(metavar="[RULE]", help="The rule's ID (default: every rule)")
    ] = None,
    process: ProcessOption = None,
) -> None:
    """Remove one fault rule (from the process that holds it) or every rule, of one process
    or of all."""
    cleared: dict[str, int] = {}
    failed: list[str] = []
    for name in processes(session, process):
        faults = client(session, name)
        try:
            # Looking for the rule: only the process that holds it is asked to clear it.
            looking = rule_id and process is None
            if looking and not any(r.rule_id == rule_id for r in faults.list()):
                continue
            cleared[name] = faults.clear(rule_id or "")
        except CliError as exc:
            if process is not None:
                raise
            failed.append(f"{name}: {exc.message}")
    total = sum(cleared.values())
    if rule_id and not total:
        unreachable = f" (not asked: {'; '.join(failed)})" if failed else ""
        raise Refused(f"no process of the cluster holds fault rule {rule_id!r}{unreachable}")

    def human() -> None:
        where = ", ".join(f"{name} {n}" for name, n in cleared.items() if n)
        session.out.line(
            f"cleared {total} fault rule{'' if total == 1 else 's'}"
            + (f" ({where})" if where else "")
        )

    session.out.show_value({"cleared": total, "by_process": cleared}, human)
    for line in failed:
        session.out.hint(f"not cleared: {line}")
