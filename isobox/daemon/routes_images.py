"""``/images``: list, remove, build."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from isobox.daemon.deps import EngineDep
from isobox.daemon.schemas import BuildImageRequest

router = APIRouter(prefix="/images", tags=["images"])


@router.get("")
def list_images(engine: EngineDep) -> list[dict[str, Any]]:
    return engine.images()


@router.post("/build", status_code=201)
def build_image(body: BuildImageRequest, engine: EngineDep) -> dict[str, Any]:
    """Build an image locally (no network): ``{"kind": "busybox", "tag": null}``."""
    return engine.build_image(body.kind, body.tag)


@router.delete("/{ref:path}")
def remove_image(
    ref: str, engine: EngineDep,
    force: Annotated[bool, Query(description="also remove tags used by containers")] = False,
) -> list[dict[str, str]]:
    """Docker's answer shape: ``[{"Untagged": "busybox:latest"}, {"Deleted": "sha256:..."}]``."""
    removed: Any = engine.remove_image(ref, force=force)  # Any: engine.py's `list` method shadows the builtin
    return [_removal(str(line)) for line in removed]


def _removal(line: str) -> dict[str, str]:
    """The engine's ``"Untagged: NAME"`` / ``"Deleted: ID"`` lines as Docker's objects."""
    kind, sep, what = line.partition(": ")
    return {kind: what} if sep and kind in ("Untagged", "Deleted") else {"Deleted": line}
