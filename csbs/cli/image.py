"""`csbs image`: images of a region, each made from an available backup or replica of it."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from csbs.cli.commands import command
from csbs.cli.context import Session
from csbs.cli.output import Printer, size, when, word
from csbs.cli.server import disks_text
from csbs.v1 import region_node_pb2 as pb

app = typer.Typer(help="Images, made from backups or replicas; servers are created from them.")

ImageArgument = Annotated[str, typer.Argument(metavar="IMAGE", help="The image's ID")]


def print_image(out: Printer, image: pb.Image) -> None:
    out.fields(
        [
            ("ID", image.image_id),
            ("Name", image.name),
            ("Description", image.description),
            ("Project", image.project_id),
            ("Status", word(pb.ImageStatus, image.status)),
            ("Backup", image.backup_id),
            ("Created", when(image.created_at)),
        ]
    )
    out.line()
    out.table(
        ("DISK", "SIZE", "SYSTEM"),
        ((str(d.disk_index), size(d.size_bytes), "yes" if d.system else "") for d in image.disks),
        empty="no disks",
    )


@command(app, "create")
def create(
    session: Session,
    backup_id: Annotated[
        str, typer.Argument(metavar="BACKUP", help="An available backup or replica of the region")
    ],
    name: Annotated[str, typer.Option(help="The image's name (P1) (default: made up)")] = "",
    description: Annotated[str, typer.Option(help="At most 255 characters (P2)")] = "",
    request_id: Annotated[
        str, typer.Option(help="Idempotency key: a retry with the same key returns the first")
    ] = "",
) -> None:
    """Make an image of a backup or replica (a replica only once it is available: P4)."""
    image = session.region().create_image(
        pb.CreateImageRequest(
            project_id=session.project_id,
            backup_id=backup_id,
            name=name,
            description=description,
            request_id=request_id or uuid.uuid4().hex,
        )
    )
    session.out.show(image, lambda: print_image(session.out, image))
    create_server = session.command_line("server", "create", "--image", image.image_id)
    session.out.hint(f"Create a server from it with `{create_server}`")


@command(app, "list")
def list_images(session: Session) -> None:
    """The images of the project."""
    images = session.region().list_images(session.project_id)

    def human() -> None:
        session.out.table(
            ("ID", "NAME", "STATUS", "BACKUP", "DISKS", "CREATED"),
            (
                (
                    i.image_id,
                    i.name,
                    word(pb.ImageStatus, i.status),
                    i.backup_id,
                    disks_text(list(i.disks)),
                    when(i.created_at),
                )
                for i in images
            ),
            empty=f"no images in {session.project_label} of region {session.region_id}",
        )

    session.out.show_list(images, human)


@command(app, "show")
def show(session: Session, image_id: ImageArgument) -> None:
    """Show an image."""
    image = session.region().get_image(session.project_id, image_id)
    session.out.show(image, lambda: print_image(session.out, image))


@command(app, "delete")
def delete(session: Session, image_id: ImageArgument) -> None:
    """Delete an image (servers made from it are kept)."""
    answer = session.region().delete_image(session.project_id, image_id)
    session.out.show(answer, lambda: session.out.line(f"deleted image {image_id}"))
