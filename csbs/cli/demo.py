"""`csbs demo`: the whole story, command by command, against a running cluster (or, with
--fresh-cluster, one started for it): a server with recognisable data in one region, backed up,
replicated to another region's non-main project, an image of the replica there and a server from
it whose disks have the source's SHA-256; then two rules refusing (R2, R5).

Each step is printed as the csbs command a user would type, then run through the same command
line in this process, so that what is shown is exactly what that command prints."""

from __future__ import annotations

import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from csbs.cli.commands import command
from csbs.cli.context import Options, Session
from csbs.cli.demo_files import write_demo_files
from csbs.cli.errors import CliError, Refused, UsageError
from csbs.cli.fresh_cluster import fresh_cluster
from csbs.cli.output import recording
from csbs.credentials import new_token
from csbs.v1 import common_pb2
from csbs.v1 import coordinator_pb2 as cpb
from csbs.v1 import region_node_pb2 as pb


@dataclass(frozen=True)
class Scope:
    """The region and project a step acts in (an empty project: the main one)."""

    region: str
    project: str = ""


class _Story:
    """Runs shown commands through the csbs app in this process."""

    def __init__(self, app: typer.Typer, hidden: list[str], first_region: str) -> None:
        self._app = app
        self._hidden = hidden  # where the cluster is: not part of what a user types
        self._first_region = first_region

    def say(self, text: str) -> None:
        sys.stdout.write(f"\n# {text}\n")
        sys.stdout.flush()

    def run(self, *words: str, scope: Scope, refused: bool = False) -> Any:
        """Shows and runs `csbs [--region R] [--project P] WORDS`; returns the last answer it
        printed. A step that should be refused must end in exit status 1."""
        flags: list[str] = []
        if scope.region != self._first_region:
            flags += ["--region", scope.region]
        if scope.project:
            flags += ["--project", scope.project]
        shown = [*flags, *words]
        sys.stdout.write(f"$ {shlex.join(['csbs', *shown])}\n")
        sys.stdout.flush()
        with recording() as seen:
            code = self._app(args=[*self._hidden, *shown], prog_name="csbs", standalone_mode=False)
        sys.stdout.flush()
        sys.stderr.flush()
        code = code or 0
        if refused:
            sys.stdout.write(f"(exit status {code})\n")
            if code != 1:
                raise Refused(f"the demo expected `{shlex.join(words)}` to be refused")
            return None
        if code != 0:
            raise CliError(f"the demo stopped: `{shlex.join(words)}` ended with status {code}")
        return seen[-1] if seen else None


def _hidden_options(options: Options, config: Path | None) -> list[str]:
    hidden: list[str] = []
    if config is not None:
        hidden += ["--config", str(config)]
    for address in options.addresses:
        hidden += ["--address", address]
    if options.coordinator:
        hidden += ["--coordinator", options.coordinator]
    if options.token:
        hidden += ["--token", options.token]
    if options.operator_token:
        hidden += ["--operator-token", options.operator_token]
    if options.ca:
        hidden += ["--ca", str(options.ca)]
    return hidden


def _choose_target(targets: list[cpb.ReplicationTarget]) -> tuple[str, str]:
    """A target region that answered, and a non-main project of it where there is one (P3)."""
    targets = [t for t in targets if not t.unreachable]
    for target in targets:
        for project in target.projects:
            if not project.main:
                return target.region_id, project.project_id
    if not targets:
        raise Refused("the demo needs a region that accepts replication; none does (R5)")
    main = next((p.project_id for p in targets[0].projects if p.main), "")
    return targets[0].region_id, main


def _story(app: typer.Typer, session: Session, hidden: list[str], data_mib: int) -> None:
    source = session.region_id
    first_region = session.region_ids[0]
    infos: dict[str, common_pb2.RegionInfo] = {
        r: session.region(r).region_info() for r in session.region_ids
    }
    target, target_project = _choose_target(session.coordinator().list_targets(source))
    refusing = next(
        (r for r, info in infos.items() if r != source and not info.accepts_replication), ""
    )
    story = _Story(app, hidden, first_region)
    here = Scope(source, session.project_id)
    there = Scope(target, target_project)

    story.say(
        f"The regions, and where {source} can replicate to: only regions that accept "
        "replication (R5)."
    )
    story.run("region", "list", scope=here)
    story.run("region", "targets", scope=here)

    story.say(
        f"A server in {source}, with {data_mib} MiB of recognisable data on its system disk "
        f"and {data_mib // 2} MiB on its data disk."
    )
    server: pb.Server = story.run(
        "server",
        "create",
        "--name",
        "demo-source",
        "--disk",
        f"{2 * data_mib}MiB",
        "--disk",
        f"{data_mib}MiB",
        scope=here,
    )
    sid = server.server_id
    with tempfile.TemporaryDirectory(prefix="csbs-demo-") as tmp:
        system_file, data_file = write_demo_files(Path(tmp), data_mib)
        story.run("server", "write", sid, "--disk", "0", "--file", str(system_file), scope=here)
        story.run(
            "server",
            "write",
            sid,
            "--disk",
            "1",
            "--offset",
            "1MiB",
            "--file",
            str(data_file),
            scope=here,
        )
    source_sums = [
        story.run("server", "read", sid, "--disk", str(d), "--sha256", scope=here)["sha256"]
        for d in (0, 1)
    ]

    story.say("Back it up, both disks, and wait until the backup is available.")
    backup: pb.Backup = story.run(
        "backup", "create", sid, "--name", "demo-backup", "--wait", scope=here
    )
    bid = backup.backup_id

    story.say(
        f"Replicate the backup to {target}, into project {target_project} (P3), and follow "
        "the replication's progress."
    )
    job: cpb.ReplicationJob = story.run(
        "backup",
        "replicate",
        bid,
        "--to",
        target,
        "--to-project",
        target_project,
        "--description",
        f"DR copy of demo-source from {source}",
        "--wait",
        scope=here,
    )
    rid = job.replica_id

    story.say(f"The replica in {target}: available, and it records where it came from.")
    story.run("backup", "show", rid, scope=there)

    story.say("An image of the replica there, and a new server from that image.")
    image: pb.Image = story.run("image", "create", rid, "--name", "demo-image", scope=there)
    copy: pb.Server = story.run(
        "server", "create", "--image", image.image_id, "--name", "demo-copy", "--wait", scope=there
    )
    copy_sums = [
        story.run("server", "read", copy.server_id, "--disk", str(d), "--sha256", scope=there)[
            "sha256"
        ]
        for d in (0, 1)
    ]
    for disk, (mine, theirs) in enumerate(zip(source_sums, copy_sums, strict=True)):
        if mine != theirs:
            raise Refused(f"disk {disk} of the copy differs from the source's: {theirs} != {mine}")
    story.say(
        f"Both disks of the server in {target} have the SHA-256 of the source's disks in "
        f"{source}: byte-for-byte the same."
    )

    story.say("R2: a replica only makes images; it cannot be replicated again.")
    story.run("backup", "replicate", rid, "--to", source, refused=True, scope=there)
    if refusing:
        story.say(f"R5: {refusing} does not accept replication, so it cannot be a target.")
        story.run("backup", "replicate", bid, "--to", refusing, refused=True, scope=here)
    story.say("Done.")


@contextmanager
def _cluster(session: Session, fresh: bool, tls: bool) -> Iterator[Options]:
    """The options the story runs with: the session's, or those of a fresh cluster (its own
    config, the default account's token made for it, TLS if asked)."""
    if not fresh:
        yield replace(session.options, config=session.config_path)
        return
    if session.config is None:
        raise UsageError("--fresh-cluster: needs a cluster config to copy the regions of")
    sys.stdout.write(
        f"# Starting a fresh cluster of the regions of {session.config_path} "
        f"(ephemeral ports, data in a temp dir{', TLS on every channel' if tls else ''})...\n"
    )
    sys.stdout.flush()
    account = session.config.default_account.account_id
    token = new_token()
    with fresh_cluster(session.config, {account: token}, tls) as path:
        options = session.options
        yield Options(config=path, region=options.region, project=options.project, token=token)


def register(app: typer.Typer) -> None:
    @command(app, "demo")
    def demo(
        session: Session,
        fresh: Annotated[
            bool,
            typer.Option(
                "--fresh-cluster",
                help="Start a fresh cluster of the config's regions for the demo, and stop it "
                "after (what `make demo` does)",
            ),
        ] = False,
        tls: Annotated[
            bool,
            typer.Option("--tls", help="With --fresh-cluster: run it with TLS on every channel"),
        ] = False,
        data_mib: Annotated[
            int,
            typer.Option("--data-mib", help="MiB of data on the system disk", min=2, max=1024),
        ] = 32,
    ) -> None:
        """The whole story: back up a server, replicate it to another region, make an image and
        a server from the replica there, and check their disks are identical; then R2 and R5
        refusing."""
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        if tls and not fresh:
            raise UsageError("--tls: only with --fresh-cluster (a running cluster has its own)")
        with _cluster(session, fresh, tls) as options, Session(options) as running:
            _story(app, running, _hidden_options(options, options.config), data_mib)
