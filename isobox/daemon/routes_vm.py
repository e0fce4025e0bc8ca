"""VM-only routes: ``/containers/{ref}/cp`` (through the guest agent)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from isobox.daemon.deps import EngineDep
from isobox.errors import Conflict, InvalidArgument

router = APIRouter(tags=["vm"])


@router.post("/containers/{ref}/cp")
async def copy_files(ref: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    """Copy one regular file between the host and a running VM.  Body: ``{"to_guest": bool,
    "host_path": str, "guest_path": str}``; the daemon (root, same host) opens the host path."""
    from starlette.concurrency import run_in_threadpool

    from isobox.runtimes.vm import files, specdisk
    from isobox.runtimes.vm.runtime import run_dir

    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("host_path"), str) \
            or not isinstance(body.get("guest_path"), str):
        raise InvalidArgument("cp needs host_path and guest_path")
    rec = engine.store.find_container(ref)
    if rec.spec.get("isolation") != "vm":
        raise InvalidArgument("cp is implemented for --isolation vm workloads only")
    if rec.state != "running":
        raise Conflict(f"container {rec.name} is not running")
    root = "" if rec.applied.get("Firmware") else specdisk.ROOT  # a firmware-booted OS: the agent's / is the guest's
    if body.get("to_guest"):
        size = await run_in_threadpool(files.copy_to_guest, run_dir(rec.id), body["host_path"], body["guest_path"], root)
    else:
        size = await run_in_threadpool(files.copy_from_guest, run_dir(rec.id), body["guest_path"], body["host_path"], root)
    return {"Size": size}


def _vm(engine: Any, ref: str) -> tuple[Any, Any, Any, bool, list[Any]]:
    """(record, root overlay, QMP socket, running, the other qcow2 drives snapshots take along)."""
    from isobox.runtimes.vm.diskboot import vars_store
    from isobox.runtimes.vm.runtime import data_dir, run_dir

    rec = engine.store.find_container(ref)
    if rec.spec.get("isolation") != "vm":
        raise InvalidArgument("this is implemented for --isolation vm workloads only")
    running = rec.state == "running"
    companions = [p for p in (vars_store(data_dir(rec.id)),) if p is not None]
    return rec, data_dir(rec.id) / "root.qcow2", run_dir(rec.id) / "qmp.sock", running, companions


@router.get("/containers/{ref}/snapshots")
def list_snapshots(ref: str, engine: EngineDep) -> list[dict[str, Any]]:
    """A VM's snapshots (internal to its qcow2 overlay; ``Memory`` when VM state was saved)."""
    from isobox.runtimes.vm import snapshots

    _rec, overlay, _qmp, _running, _companions = _vm(engine, ref)
    return snapshots.list_snapshots(overlay)


@router.post("/containers/{ref}/snapshots", status_code=201)
async def create_snapshot(ref: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    """Body ``{"name": str}``.  Running VM: disk + memory (QMP savevm); stopped: disk only."""
    from starlette.concurrency import run_in_threadpool

    from isobox.runtimes.vm import snapshots

    body = await request.json()
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str):
        raise InvalidArgument("snapshot create needs a name")
    _rec, overlay, qmp, running, companions = _vm(engine, ref)
    await run_in_threadpool(snapshots.create, overlay, qmp, running, name, companions)
    return {"Name": name}


@router.post("/containers/{ref}/snapshots/{name}/restore", status_code=204)
def restore_snapshot(ref: str, name: str, engine: EngineDep) -> None:
    """Running VM: back to the saved disk + memory (QMP loadvm); stopped: disk only."""
    from isobox.runtimes.vm import snapshots

    _rec, overlay, qmp, running, companions = _vm(engine, ref)
    snapshots.restore(overlay, qmp, running, name, companions)


@router.delete("/containers/{ref}/snapshots/{name}", status_code=204)
def remove_snapshot(ref: str, name: str, engine: EngineDep) -> None:
    from isobox.runtimes.vm import snapshots

    _rec, overlay, qmp, running, companions = _vm(engine, ref)
    snapshots.remove(overlay, qmp, running, name, companions)


@router.get("/containers/{ref}/console")
def console_socket(ref: str, engine: EngineDep) -> dict[str, Any]:
    """The unix socket of a running VM's serial console (raw bytes both ways)."""
    from isobox.runtimes.vm.runtime import run_dir

    rec, _overlay, _qmp, running, _companions = _vm(engine, ref)
    if not running:
        raise Conflict(f"container {rec.name} is not running")
    return {"ConsoleSocket": str(run_dir(rec.id) / "tty.sock")}
