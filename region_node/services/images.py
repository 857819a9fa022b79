"""Images: made from an available backup or replica of the region (P4), used to create
servers; an image keeps its backup from deletion."""

from __future__ import annotations

import secrets

from csbs.errors import BackupNotReadyForImage, FailedPrecondition
from csbs.names import validate_description, validate_name, validate_request_id
from csbs.paging import page_size
from region_node.catalog import backups as backup_rows
from region_node.catalog import images as image_rows
from region_node.catalog import page, requests
from region_node.models import BackupStatus, Image, NewImage, Page
from region_node.parts import NodeParts, makes_room, needs_space, new_id
from region_node.services.region import RegionService


class ImageService:
    def __init__(self, parts: NodeParts, region: RegionService) -> None:
        self._parts = parts
        self._region = region

    @needs_space("the image's record")
    def create(self, order: NewImage) -> Image:
        parts = self._parts
        project_id = self._region.resolve_project(order.project_id)
        validate_request_id(order.request_id)
        name = validate_name(order.name) if order.name else f"image-{secrets.token_hex(4)}"
        validate_description(order.description)
        image_id = new_id()
        with parts.catalog.transaction() as conn:
            existing = requests.resource_of(conn, "image", project_id, order.request_id)
            if existing is None:
                row = backup_rows.row(conn, project_id, order.backup_id)
                status = BackupStatus(row["status"])
                if status not in backup_rows.WHOLE:
                    raise BackupNotReadyForImage(order.backup_id, status.name.lower())
                image_rows.insert(
                    conn,
                    image_id,
                    project_id,
                    name,
                    order.description,
                    order.backup_id,
                    parts.catalog.next_seq(conn, "image"),
                    parts.now(),
                )
                requests.remember(conn, "image", project_id, order.request_id, image_id)
        parts.notifier.changed(order.backup_id)
        return self.get(project_id, existing or image_id)

    def get(self, project_id: str, image_id: str) -> Image:
        project_id = self._region.resolve_project(project_id)
        with self._parts.catalog.read() as conn:
            return image_rows.to_image(conn, image_rows.row(conn, project_id, image_id))

    def list(self, project_id: str, size: int, token: str) -> Page[Image]:
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        limit = page_size(size)
        scope = f"images/{project_id}"
        after = parts.tokens.open(scope, token)
        with parts.catalog.read() as conn:
            rows = page(
                conn, "images", image_rows.IMAGE_COLUMNS, {"project_id": project_id}, after, limit
            )
            items = [image_rows.to_image(conn, r) for r in rows[:limit]]
        next_token = parts.tokens.issue(scope, rows[limit - 1]["seq"]) if len(rows) > limit else ""
        return Page(items, next_token)

    @makes_room
    def delete(self, project_id: str, image_id: str) -> None:
        parts = self._parts
        project_id = self._region.resolve_project(project_id)
        with parts.catalog.transaction() as conn:
            backup_id = image_rows.row(conn, project_id, image_id)["backup_id"]
            creating = image_rows.server_being_created(conn, image_id)
            if creating:
                raise FailedPrecondition(
                    f"image {image_id} is being used to create server {creating}; delete it "
                    "once the server is active"
                )
            image_rows.delete(conn, image_id)
        parts.notifier.changed(backup_id)
