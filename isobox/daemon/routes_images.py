"""``/images``: list, inspect, history, tag, remove, prune, build, load, save, import-disk, Dockerfile builds.

Long operations (build, load, save, Dockerfile builds) answer with JSON when called plainly,
and with a progress stream when called with ``?stream=true``: one JSON object per line,
``{"progress": "..."}`` while the work runs, then ``{"result": ...}`` or ``{"error": {...}}``
(the error's ``to_dict()``).  When the client goes away mid-stream the work is interrupted at
its next progress step; the image store then throws away what was staged, so an interrupted
build or load leaves no partial image.

Archives are named by path on the daemon's host (the socket is root-only and local), the way
``podman load -i`` works against a local service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from isobox.daemon.deps import EngineDep
from isobox.daemon.schemas import BuildImageRequest
from isobox.errors import IsoboxError, RuntimeFailure

router = APIRouter(prefix="/images", tags=["images"])
log = logging.getLogger("isobox.daemon")
STRICT = ConfigDict(extra="forbid", strict=True)
NDJSON = "application/x-ndjson"
Stream = Annotated[bool, Query(description="answer with a progress stream (JSON lines)")]


class LoadRequest(BaseModel):
    model_config = STRICT
    path: str = Field(description="archive on the daemon's host: docker save or OCI, plain or gzip")


class SaveRequest(BaseModel):
    model_config = STRICT
    image: str
    path: str = Field(description="OCI archive to write on the daemon's host")


class ImportDiskRequest(BaseModel):
    model_config = STRICT
    path: str = Field(description="raw or qcow2 disk image, or ISO, on the daemon's host")
    name: str = Field(description="NAME[:TAG] to register it under")


class TagRequest(BaseModel):
    model_config = STRICT
    target: str = Field(description="NAME[:TAG]")


class DockerfileBuildRequest(BaseModel):
    model_config = STRICT
    context: str = Field(description="build context directory on the daemon's host")
    dockerfile: str | None = Field(None, description="path of the Dockerfile (default CONTEXT/Dockerfile)")
    tags: list[str] = Field(default_factory=list)
    build_args: dict[str, str] = Field(default_factory=dict)
    no_cache: bool = False


class Interrupted(RuntimeFailure):
    """The client went away: stop at the next progress step."""


@router.get("")
def list_images(engine: EngineDep) -> list[dict[str, Any]]:
    return engine.images()


@router.post("/build", status_code=201)
def build_image(body: BuildImageRequest, engine: EngineDep, stream: Stream = False) -> Any:
    """Build an image locally: ``{"kind": "busybox"}`` or ``{"kind": "debian:bookworm", "include": [...]}``;
    ``"bootable": true`` makes a Debian system disk that VMs boot by firmware (a VM-only image)."""
    return _answer(lambda p: engine.build_image(body.kind, body.tag, body.include, p, bootable=body.bootable), stream)


@router.post("/build/dockerfile", status_code=201)
def build_dockerfile(body: DockerfileBuildRequest, engine: EngineDep, stream: Stream = False) -> Any:
    return _answer(lambda p: engine.build_dockerfile(body.model_dump(), p), stream)


@router.post("/load", status_code=201)
def load_images(body: LoadRequest, engine: EngineDep, stream: Stream = False) -> Any:
    return _answer(lambda p: engine.load_images(body.path, p), stream)


@router.post("/import-disk", status_code=201)
def import_disk(body: ImportDiskRequest, engine: EngineDep, stream: Stream = False) -> Any:
    """Register a foreign disk image or ISO as a VM-only image (copied or converted into the store)."""
    return _answer(lambda p: engine.import_disk(body.path, body.name, p), stream)


@router.post("/save")
def save_image(body: SaveRequest, engine: EngineDep, stream: Stream = False) -> Any:
    return _answer(lambda p: engine.save_image(body.image, body.path, p), stream)


@router.post("/prune")
def prune_images(
    engine: EngineDep, all: Annotated[bool, Query(description="every unused image, not only untagged ones")] = False,
) -> dict[str, Any]:
    return engine.prune_images(all_unused=all)


@router.get("/{ref:path}/json")
def inspect_image(ref: str, engine: EngineDep) -> dict[str, Any]:
    return engine.inspect_image(ref)


@router.get("/{ref:path}/history")
def image_history(ref: str, engine: EngineDep) -> list[dict[str, Any]]:
    return engine.image_history(ref)


@router.post("/{ref:path}/tag", status_code=201)
def tag_image(ref: str, body: TagRequest, engine: EngineDep) -> dict[str, Any]:
    return engine.tag_image(ref, body.target)


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


# -- progress streams ----------------------------------------------------------------------------


def _answer(work: Callable[[Callable[[str], None]], Any], stream: bool) -> Any:
    if not stream:
        return work(lambda _: None)
    return StreamingResponse(_progress_lines(work), media_type=NDJSON)


async def _progress_lines(work: Callable[[Callable[[str], None]], Any]) -> AsyncIterator[bytes]:
    """The work runs in a thread; its progress comes back through the event loop.  When the client
    disconnects, the server cancels this generator: ``gone`` is set and the work's next progress
    call raises, which unwinds it (staging dirs and build containers are removed on the way)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    gone = threading.Event()

    def put(item: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, item)

    def progress(message: str) -> None:
        if gone.is_set():
            raise Interrupted("interrupted: the client went away")
        if message:  # an empty message only checks for interruption
            put({"progress": message})

    def run() -> None:
        try:
            put({"result": work(progress)})
        except IsoboxError as exc:
            put({"error": exc.to_dict()})
        except BaseException as exc:  # the stream has started: a 500 can no longer be sent
            log.exception("image operation failed")
            put({"error": {"message": f"internal error: {exc}", "hint": "see the isoboxd log", "kind": "IsoboxError"}})
        finally:
            put(None)

    threading.Thread(target=run, name="image-op", daemon=True).start()
    try:
        while (item := await lines.get()) is not None:
            yield (json.dumps(item) + "\n").encode()
    finally:
        gone.set()
