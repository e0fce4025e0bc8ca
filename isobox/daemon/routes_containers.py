"""``/containers``: the workload lifecycle.  ``ref`` is a name, a full id or an id prefix.

Synchronous engine calls run in the thread pool (``def`` routes, ``run_in_threadpool``);
``wait`` and ``logs`` are async because they last as long as the workload.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from isobox.attach import Frame, encode
from isobox.daemon.deps import EngineDep
from isobox.daemon.schemas import (
    CreateResponse,
    ExecResponse,
    WaitResponse,
    json_body,
    parse_create_request,
    parse_exec_request,
)
from isobox.engine import StartInfo
from isobox.errors import InvalidArgument, IsoboxError

log = logging.getLogger("isobox.daemon")

router = APIRouter(prefix="/containers", tags=["containers"])

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


class WaitCondition(StrEnum):
    NOT_RUNNING = "not-running"
    REMOVED = "removed"


def _started(info: StartInfo) -> CreateResponse:
    return CreateResponse(Id=info.id, Name=info.name, AttachSocket=info.attach_socket, Warnings=info.warnings)


@router.post(
    "",
    status_code=201,
    response_model=CreateResponse,
    openapi_extra=json_body("CreateContainerRequest", "the workload spec; start=true also starts it"),
)
async def create_container(request: Request, engine: EngineDep) -> CreateResponse:
    """Create (``start: false``) or create and start (``start: true``) a workload.

    With ``start`` and ``attach`` the workload waits to exec until a client connects to
    ``AttachSocket``, so no output is lost."""
    spec, req = parse_create_request(await request.body())
    if req.start:
        info = await run_in_threadpool(engine.run, spec, attach=req.attach)
    else:
        info = await run_in_threadpool(engine.create, spec)
    return _started(info)


@router.get("")
def list_containers(engine: EngineDep, all: Annotated[bool, Query(description="include stopped ones")] = False) -> list[dict[str, Any]]:
    return engine.list(all=all)


@router.get("/{ref}")
def inspect_container(ref: str, engine: EngineDep) -> dict[str, Any]:
    return engine.inspect(ref)


@router.post("/{ref}/start", response_model=CreateResponse)
def start_container(ref: str, engine: EngineDep, attach: Annotated[bool, Query(description="the workload waits for a client on AttachSocket")] = False) -> CreateResponse:
    return _started(engine.start(ref, attach=attach))


@router.post("/{ref}/stop", status_code=204, response_class=Response)
def stop_container(
    ref: str, engine: EngineDep, t: Annotated[int | None, Query(ge=0, description="seconds before SIGKILL")] = None
) -> None:
    engine.stop(ref, timeout=t)


@router.post("/{ref}/kill", status_code=204, response_class=Response)
def kill_container(ref: str, engine: EngineDep, signal: Annotated[str, Query(description="name or number")] = "KILL") -> None:
    engine.kill(ref, int(signal) if signal.isdigit() else signal)


@router.delete("/{ref}", status_code=204, response_class=Response)
def remove_container(ref: str, engine: EngineDep, force: Annotated[bool, Query(description="stop it first if it runs")] = False) -> None:
    engine.remove(ref, force=force)


@router.post("/{ref}/wait", response_model=WaitResponse)
async def wait_container(
    ref: str, engine: EngineDep, condition: WaitCondition = WaitCondition.NOT_RUNNING
) -> dict[str, Any]:
    return await engine.wait(ref, condition=condition.value)


@router.get("/{ref}/logs", response_class=StreamingResponse, responses={200: {"content": {MULTIPLEXED: {}}}})
async def container_logs(
    ref: str,
    engine: EngineDep,
    follow: bool = False,
    tail: Annotated[str, Query(description='"all" or a number of lines')] = "all",
    timestamps: bool = False,
) -> StreamingResponse:
    """STDOUT/STDERR frames in the attach framing (isobox/attach.py); an ERROR frame if the
    stream breaks after it started."""
    lines = _parse_tail(tail)
    # Resolve the ref before the 200 goes out, so an unknown container is a plain 404.
    info = await run_in_threadpool(engine.inspect, ref)
    source = engine.logs(str(info.get("Id", ref)), follow=follow, tail=lines, timestamps=timestamps)
    return StreamingResponse(_frames(source), media_type=MULTIPLEXED)


async def _frames(source: AsyncIterator[tuple[int, bytes]]) -> AsyncIterator[bytes]:
    try:
        async for stream, data in source:
            yield encode(Frame(stream), data)
    except IsoboxError as exc:
        yield encode(Frame.ERROR, exc.message.encode())
    except Exception as exc:
        log.exception("log stream failed")
        yield encode(Frame.ERROR, f"internal error: {exc}".encode())


def _parse_tail(tail: str) -> int | None:
    if tail in ("all", ""):
        return None
    if not tail.isdigit():
        raise InvalidArgument(f"invalid tail {tail!r}", hint='use "all" or a number of lines')
    return int(tail)


@router.post(
    "/{ref}/exec",
    status_code=201,
    response_model=ExecResponse,
    openapi_extra=json_body("ExecConfig", "the command to run in the workload"),
)
async def exec_in_container(ref: str, request: Request, engine: EngineDep) -> ExecResponse:
    spec = parse_exec_request(await request.body())
    info = await run_in_threadpool(engine.exec, ref, spec)
    return ExecResponse(Id=info.exec_id, AttachSocket=info.attach_socket)


@router.get("/{ref}/stats")
def container_stats(ref: str, engine: EngineDep) -> dict[str, Any]:
    return engine.stats(ref)
