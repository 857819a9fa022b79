"""The `csbs` console script: the typer app and its command groups."""

from __future__ import annotations

import os

# gRPC's own log lines (a failed TLS handshake, say) are not for a command line's user: each
# failure is told once, as one `error:` line. Set before gRPC starts.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import typer

from csbs.cli import (
    backup,
    clock,
    demo,
    fault,
    image,
    job,
    link,
    policy,
    quota,
    region,
    rpo,
    server,
)
from csbs.cli.commands import root_callback

app = typer.Typer(
    name="csbs",
    help="Talk to a csbs-sim cluster: regions, servers, backups, replication, images, "
    "policies, quotas, the cluster clock, and the world around the regions to rehearse "
    "failures: links, outages, faults, recovery points.\n\n"
    "Every command takes --json, and the cluster options before or after its name.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    callback=root_callback(),
)
app.add_typer(region.app, name="region", no_args_is_help=True)
app.add_typer(server.app, name="server", no_args_is_help=True)
app.add_typer(backup.app, name="backup", no_args_is_help=True)
app.add_typer(job.app, name="job", no_args_is_help=True)
app.add_typer(image.app, name="image", no_args_is_help=True)
app.add_typer(policy.app, name="policy", no_args_is_help=True)
app.add_typer(clock.app, name="clock", no_args_is_help=True)
app.add_typer(fault.app, name="fault", no_args_is_help=True)
app.add_typer(quota.app, name="quota")
app.add_typer(link.app, name="link", no_args_is_help=True)
rpo.register(app)
demo.register(app)


def main() -> None:
    app(prog_name="csbs")


if __name__ == "__main__":
    main()
