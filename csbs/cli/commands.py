"""The options every csbs command takes, and how a command runs.

The cluster options (--config, --region, --project, --token, --operator-token, --ca, --address,
--coordinator) and --json are accepted both before the command's name
(`csbs --region cn-east-3 server list`) and after it (`csbs server list --region cn-east-3`):
`command()` adds them to every command, so that each command's function declares only its own.
The CSBS_* variables are read only for the options given before the name, so that an option
given on the command line always wins.

A command's function gets the Session and its own arguments; a CliError it raises is printed as
one line (`error: ...`) and ends the command with the error's exit code."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from csbs.cli.context import Options, Session
from csbs.cli.errors import CliError, Interrupted
from csbs.request_ids import accepted

PANEL = "Cluster options"

_FIELDS = {
    "opt_config": "config",
    "opt_region": "region",
    "opt_project": "project",
    "opt_token": "token",
    "opt_operator_token": "operator_token",
    "opt_ca": "ca",
    "opt_address": "addresses",
    "opt_coordinator": "coordinator",
    "opt_json": "json",
    "opt_request_id": "request_id",
}


def _parameters(root: bool) -> list[inspect.Parameter]:
    """The common options as parameters typer reads; with the CSBS_* variables at the root."""

    def option(
        name: str,
        kind: Any,
        default: Any,
        decl: str,
        help: str,
        envvar: str | None = None,
        metavar: str | None = None,
    ) -> inspect.Parameter:
        info = typer.Option(
            decl,
            help=help,
            metavar=metavar,
            envvar=envvar if root else None,
            rich_help_panel=PANEL,
            show_default=False,
        )
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info]
        )

    return [
        option(
            "opt_config",
            Path | None,
            None,
            "--config",
            "The cluster config file (default: the shipped one, csbs/cluster.toml)",
            "CSBS_CONFIG",
            "FILE",
        ),
        option(
            "opt_region",
            str | None,
            None,
            "--region",
            "The region to act in (default: the config's first region)",
            "CSBS_REGION",
            "REGION",
        ),
        option(
            "opt_project",
            str | None,
            None,
            "--project",
            "The project to act in (default: your main project in the region)",
            "CSBS_PROJECT",
            "PROJECT",
        ),
        option(
            "opt_token",
            str | None,
            None,
            "--token",
            "Your account's API token, sent as `authorization: Bearer TOKEN` "
            "(make cluster prints the default account's at the cluster's first start)",
            "CSBS_TOKEN",
            "TOKEN",
        ),
        option(
            "opt_operator_token",
            str | None,
            None,
            "--operator-token",
            "The operator credential, for operator calls (moving the simulated clock, a "
            "region's capacity, quotas)",
            "CSBS_OPERATOR_TOKEN",
            "TOKEN",
        ),
        option(
            "opt_ca",
            Path | None,
            None,
            "--ca",
            "Use TLS, trusting this CA certificate (PEM; default with a TLS cluster config: "
            "<data_dir>/tls/ca.pem)",
            "CSBS_CA",
            "FILE",
        ),
        option(
            "opt_address",
            list[str] | None,
            None,
            "--address",
            "Where a region's node listens, instead of the config's (repeatable)",
            metavar="REGION=HOST:PORT",
        ),
        option(
            "opt_coordinator",
            str | None,
            None,
            "--coordinator",
            "Where the coordinator listens, instead of the config's; given alone (no --config, no "
            "--address), the regions are found in its catalog (ListRegions)",
            metavar="HOST:PORT",
        ),
        option("opt_json", bool, False, "--json", "Print exactly the resource or list as JSON"),
        option(
            "opt_request_id",
            str | None,
            None,
            "--request-id",
            "The request ID every call of the command carries (x-request-id; default: a new one "
            "per command), so that one grep over the logs finds what it caused",
            "CSBS_REQUEST_ID",
            "ID",
        ),
    ]


def _options(values: dict[str, Any]) -> Options:
    given = {_FIELDS[name]: values.pop(name) for name in list(values) if name in _FIELDS}
    given["addresses"] = tuple(given.get("addresses") or ())
    return Options(**given)


def _context_parameter() -> inspect.Parameter:
    return inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )


def fail(error: CliError, json_mode: bool = False) -> typer.Exit:
    """Prints the error as its one line (with --json, one JSON object on a line) and returns
    the Exit to raise."""
    sys.stdout.flush()
    prefix = "" if isinstance(error, Interrupted) else "error: "
    line = json.dumps(error.as_json()) if json_mode else f"{prefix}{error.message}"
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
    return typer.Exit(error.exit_code)


def run(options: Options, body: Callable[[Session], None]) -> None:
    """Runs a command's body with a Session of the options; a CliError ends it with its line."""
    # One request ID for every call of the command (issue 14: one grep follows it).
    options = dataclasses.replace(options, request_id=accepted(options.request_id))
    try:
        with Session(options) as session:
            body(session)
    except CliError as exc:
        raise fail(exc, options.json) from None


def root_callback() -> Callable[..., None]:
    """The app's callback: keeps the options given before the command's name (or through the
    CSBS_* variables) for the command."""

    def callback(ctx: typer.Context, **values: Any) -> None:
        ctx.obj = _options(values)

    callback.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [_context_parameter(), *_parameters(root=True)]
    )
    return callback


def command(group: typer.Typer, name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Registers `fn(session, **own_arguments)` as the command `name` of `group`, taking the
    common options besides its own."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(fn, eval_str=True)
        own = list(signature.parameters.values())[1:]  # the first is the Session

        def wrapper(ctx: typer.Context, **values: Any) -> None:
            leaf = _options(values)
            base = ctx.obj if isinstance(ctx.obj, Options) else Options()
            run(leaf.over(base), lambda session: fn(session, **values))

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[_context_parameter(), *own, *_parameters(root=False)]
        )
        wrapper.__doc__ = fn.__doc__
        wrapper.__name__ = fn.__name__
        wrapper.__module__ = fn.__module__
        group.command(name)(wrapper)
        return fn

    return register


def group_command(group: typer.Typer) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Registers `fn(session, **own_arguments)` as what `csbs GROUP` does when none of the
    group's commands is named (`csbs quota`), taking the common options besides its own; the
    common options given there hold for a command of the group named after them too."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(fn, eval_str=True)
        own = list(signature.parameters.values())[1:]  # the first is the Session

        def callback(ctx: typer.Context, **values: Any) -> None:
            leaf = _options(values)
            base = ctx.obj if isinstance(ctx.obj, Options) else Options()
            if ctx.invoked_subcommand is None:
                run(leaf.over(base), lambda session: fn(session, **values))
            else:
                ctx.obj = leaf.over(base)  # the named command's context starts from these

        callback.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[_context_parameter(), *own, *_parameters(root=False)]
        )
        callback.__doc__ = fn.__doc__
        group.callback(invoke_without_command=True)(callback)
        return fn

    return register
