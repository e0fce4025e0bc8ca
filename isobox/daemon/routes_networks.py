"""``/networks``: Docker's network endpoints, for isobox's bridge networks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from isobox.daemon.deps import EngineDep
from isobox.errors import InvalidArgument

router = APIRouter(tags=["networks"])


def _summary(engine: Any, name: str) -> dict[str, Any]:
    return dict(engine.net.inspect(name))


@router.get("/networks")
def list_networks(engine: EngineDep) -> list[dict[str, Any]]:
    return [_summary(engine, net.name) for net in engine.net.networks()]


@router.post("/networks/create", status_code=201)
async def create_network(request: Request, engine: EngineDep) -> dict[str, Any]:
    """Body: ``{"Name": str, "Subnet": str?, "Internal": bool?}``."""
    from starlette.concurrency import run_in_threadpool

    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgument("the request body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("Name"), str):
        raise InvalidArgument("network create needs a Name")
    subnet, internal = body.get("Subnet"), body.get("Internal", False)
    if subnet is not None and not isinstance(subnet, str) or not isinstance(internal, bool):
        raise InvalidArgument("Subnet must be a string and Internal a boolean")
    net = await run_in_threadpool(engine.net.create, body["Name"], subnet, internal)
    return {"Id": net.id, "Name": net.name}


@router.get("/networks/{ref}")
def inspect_network(ref: str, engine: EngineDep) -> dict[str, Any]:
    return _summary(engine, ref)


@router.delete("/networks/{ref}", status_code=204)
def remove_network(ref: str, engine: EngineDep) -> None:
    engine.net.remove(ref)
