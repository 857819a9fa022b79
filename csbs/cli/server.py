"""`csbs server`: servers and their disks: create (blank, or from an image), list, show, delete,
and write or read a disk's bytes."""

from __future__ import annotations

import enum
import hashlib
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.errors import Refused, UsageError
from csbs.cli.output import Printer, size, when, word
from csbs.cli.progress import Step, follow
from csbs.v1 import common_pb2
from csbs.v1 import region_node_pb2 as pb

app = typer.Typer(help="Servers and their disks.")

MIB = 1 << 20
WRITE_PIECE = MIB  # bytes a WriteDisk message carries (the contract allows up to 4 MiB)
DEFAULT_DISK = "40GiB"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*(?:([KMGT])(?:i?B)?|(B))?", re.IGNORECASE | re.ASCII)


class ServerKind(enum.StrEnum):
    ecs = "ecs"
    bms = "bms"


_SERVER_TYPES = {
    ServerKind.ecs: common_pb2.SERVER_TYPE_ECS,
    ServerKind.bms: common_pb2.SERVER_TYPE_BMS,
}
SETTLED = (pb.SERVER_STATUS_ACTIVE, pb.SERVER_STATUS_ERROR)


def parse_bytes(text: str, option: str, bare_unit: str = "") -> int:
    """A byte count such as 4096, 16MiB, 40G or 1TiB (binary units); a bare number counts in
    `bare_unit` (bytes if none)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{option}: expected a size such as 512MiB or 40GiB, got {text!r}")
    number, unit, plain_bytes = match.groups()
    if plain_bytes:
        unit = ""
    elif unit is None:
        unit = bare_unit
    return int(number) * _UNITS[unit.upper()]


def short(resource_id: str) -> str:
    return resource_id[:8]


def disks_text(disks: list[pb.Disk] | list[pb.BackupDisk]) -> str:
    return " + ".join(size(d.size_bytes) for d in disks)


def print_server(out: Printer, server: pb.Server) -> None:
    busy = server.status in (pb.SERVER_STATUS_CREATING, pb.SERVER_STATUS_RESTORING)
    progress = ""
    if busy and server.progress_bytes_total:
        progress = f"{size(server.progress_bytes_done)} of {size(server.progress_bytes_total)}"
    out.fields(
        [
            ("ID", server.server_id),
            ("Name", server.name),
            ("Project", server.project_id),
            ("Type", word(common_pb2.ServerType, server.server_type)),
            ("Status", word(pb.ServerStatus, server.status)),
            ("Progress", progress),
            ("Error", server.error_reason),
            ("Image", server.image_id),
            ("Created", when(server.created_at)),
            ("Updated", when(server.updated_at)),
        ]
    )
    out.line()
    out.table(
        ("DISK", "ID", "SIZE", "SYSTEM"),
        (
            (str(d.disk_index), d.disk_id, size(d.size_bytes), "yes" if d.system else "")
            for d in server.disks
        ),
        empty="no disks",
    )


def _step(server: pb.Server) -> Step:
    return Step(
        word(pb.ServerStatus, server.status),
        server.progress_bytes_done,
        server.progress_bytes_total,
        server.status in SETTLED,
    )


def wait_server(session: Session, server: pb.Server, what: str) -> pb.Server:
    """Follows a server being created from an image or restored until it is active; an error
    ends the command."""
    region = session.region()
    final = follow(
        region.watch_server(session.project_id, server.server_id),
        _step,
        what=f"{what} {short(server.server_id)}",
        resume=session.command_line("server", "show", server.server_id, "--wait"),
        console=session.out.err,
    )
    if final.status == pb.SERVER_STATUS_ERROR:
        raise Refused(f"server {server.server_id} is in error: {final.error_reason}")
    return final


@command(app, "create")
def create(
    session: Session,
    name: Annotated[str, typer.Option(help="The server's name (P1) (default: made up)")] = "",
    disk: Annotated[
        list[str] | None,
        typer.Option(
            help="A blank disk's size, such as 40GiB or 512MiB (a bare number is GiB); the first "
            f"is the system disk, repeat for data disks (default: one {DEFAULT_DISK} disk)",
        ),
    ] = None,
    image: Annotated[
        str, typer.Option(help="Create from this image of the region: it gives the disks")
    ] = "",
    server_type: Annotated[
        ServerKind, typer.Option("--type", help="Elastic cloud server or bare-metal server")
    ] = ServerKind.ecs,
    request_id: Annotated[
        str,
        typer.Option(help="Idempotency key: a retry with the same key returns the first server"),
    ] = "",
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="From an image: wait until its disks are written, with progress"
        ),
    ] = False,
) -> None:
    """Create a server: with blank disks, or from an image (then its disks are written from the
    image's backup; follow with --wait)."""
    if image and disk:
        raise UsageError("--disk and --image cannot go together: an image gives the disks")
    sizes = [] if image else [parse_bytes(d, "--disk", "G") for d in disk or [DEFAULT_DISK]]
    server = session.region().create_server(
        pb.CreateServerRequest(
            project_id=session.project_id,
            name=name,
            server_type=_SERVER_TYPES[server_type],
            disks=[pb.DiskSpec(size_bytes=s) for s in sizes],
            image_id=image,
            request_id=request_id or uuid.uuid4().hex,
        )
    )
    if wait and server.status not in SETTLED:
        server = wait_server(session, server, "server")
    session.out.show(server, lambda: print_server(session.out, server))
    if server.status not in SETTLED:
        show = session.command_line("server", "show", server.server_id, "--wait")
        session.out.hint(f"Its disks are being written from the image; follow with `{show}`")


@command(app, "list")
def list_servers(session: Session) -> None:
    """The servers of the project."""
    servers = session.region().list_servers(session.project_id)

    def human() -> None:
        session.out.table(
            ("ID", "NAME", "TYPE", "STATUS", "DISKS", "CREATED"),
            (
                (
                    s.server_id,
                    s.name,
                    word(common_pb2.ServerType, s.server_type),
                    word(pb.ServerStatus, s.status),
                    disks_text(list(s.disks)),
                    when(s.created_at),
                )
                for s in servers
            ),
            empty=f"no servers in {session.project_label} of region {session.region_id}",
        )

    session.out.show_list(servers, human)


@command(app, "show")
def show(
    session: Session,
    server_id: Annotated[str, typer.Argument(metavar="SERVER", help="The server's ID")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="If it is being created or restored, wait until it is active"),
    ] = False,
) -> None:
    """Show a server and its disks."""
    server = session.region().get_server(session.project_id, server_id)
    if wait and server.status not in SETTLED:
        server = wait_server(session, server, "server")
    session.out.show(server, lambda: print_server(session.out, server))


@command(app, "delete")
def delete(
    session: Session,
    server_id: Annotated[str, typer.Argument(metavar="SERVER", help="The server's ID")],
) -> None:
    """Delete a server and its disks (its backups are kept)."""
    server = session.region().delete_server(session.project_id, server_id)
    session.out.show(
        server, lambda: session.out.line(f"deleted server {server.server_id} ({server.name})")
    )


def _open_input(file: Path) -> IO[bytes]:
    if str(file) == "-":
        return sys.stdin.buffer
    try:
        return file.open("rb")
    except OSError as exc:
        raise UsageError(f"--file: cannot read {file}: {exc.strerror}") from None


@command(app, "write")
def write(
    session: Session,
    server_id: Annotated[str, typer.Argument(metavar="SERVER", help="The server's ID")],
    disk: Annotated[int, typer.Option(help="The disk's index (0 is the system disk)", min=0)],
    file: Annotated[Path, typer.Option(help="The bytes to write (- for stdin)")],
    offset: Annotated[
        str, typer.Option(help="Where on the disk to start, such as 4096 or 1MiB")
    ] = "0",
) -> None:
    """Write a file's bytes onto a server's disk at an offset."""
    start = parse_bytes(offset, "--offset")
    source = _open_input(file)

    def pieces() -> Iterator[pb.WriteDiskRequest]:
        position = start
        while data := source.read(WRITE_PIECE):
            yield pb.WriteDiskRequest(
                project_id=session.project_id,
                server_id=server_id,
                disk_index=disk,
                offset=position,
                data=data,
            )
            position += len(data)

    try:
        answer = session.region().write_disk(pieces())
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    session.out.show(
        answer,
        lambda: session.out.line(
            f"wrote {size(answer.bytes_written)} ({answer.bytes_written} bytes) to disk {disk} "
            f"of server {server_id} at offset {start}"
        ),
    )


@command(app, "read")
def read(
    session: Session,
    server_id: Annotated[str, typer.Argument(metavar="SERVER", help="The server's ID")],
    disk: Annotated[int, typer.Option(help="The disk's index (0 is the system disk)", min=0)],
    offset: Annotated[str, typer.Option(help="Where on the disk to start")] = "0",
    length: Annotated[
        str, typer.Option(help="How much to read (default: to the disk's end)")
    ] = "0",
    output: Annotated[
        Path | None, typer.Option(help="Write the bytes to this file instead of stdout")
    ] = None,
    sha256: Annotated[
        bool, typer.Option("--sha256", help="Print the bytes' SHA-256 instead of the bytes")
    ] = False,
) -> None:
    """Read a server's disk: its bytes to stdout (`> FILE`) or --output FILE, or only their
    SHA-256 with --sha256."""
    to_stdout = output is None and not sha256
    if to_stdout and session.out.json:
        raise UsageError("--json: give --output FILE or --sha256; the bytes would go to stdout")
    if to_stdout and sys.stdout.isatty():
        raise UsageError(
            "not writing a disk's bytes to a terminal: redirect stdout (> FILE), or give "
            "--output FILE or --sha256"
        )
    request = pb.ReadDiskRequest(
        project_id=session.project_id,
        server_id=server_id,
        disk_index=disk,
        offset=parse_bytes(offset, "--offset"),
        length=parse_bytes(length, "--length"),
    )
    digest = hashlib.sha256()
    count = 0
    sink: IO[bytes] | None = None
    if output is not None:
        try:
            sink = output.open("wb")
        except OSError as exc:
            raise UsageError(f"--output: cannot write {output}: {exc.strerror}") from None
    elif to_stdout:
        sink = sys.stdout.buffer
    try:
        for message in session.region().read_disk(request):
            digest.update(message.data)
            count += len(message.data)
            if sink is not None:
                sink.write(message.data)
    finally:
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    if to_stdout:
        sys.stdout.buffer.flush()
        return
    summary = {
        "server_id": server_id,
        "disk_index": disk,
        "offset": str(request.offset),
        "bytes_read": str(count),
        "sha256": digest.hexdigest(),
    }

    def human() -> None:
        if sha256:
            session.out.line(f"{digest.hexdigest()}  {server_id} disk {disk}")
        else:
            session.out.line(
                f"read {size(count)} ({count} bytes) of disk {disk} of server {server_id} "
                f"to {output}, sha256 {digest.hexdigest()}"
            )

    session.out.show_value(summary, human)
