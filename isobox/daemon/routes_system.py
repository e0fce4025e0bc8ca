"""``/_ping``, ``/version``, ``/system/info``."""

from __future__ import annotations

import os
import platform
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from isobox import __version__
from isobox.daemon import API_VERSION
from isobox.daemon.deps import EngineDep

router = APIRouter(tags=["system"])


@router.get("/_ping", response_class=PlainTextResponse)
async def ping() -> str:
    """Liveness: answers ``OK`` as soon as the daemon serves requests."""
    return "OK"


@router.head("/_ping", response_class=PlainTextResponse)
async def ping_head() -> str:
    return "OK"


@router.get("/version")
async def version() -> dict[str, Any]:
    uname = os.uname()
    return {
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "Os": uname.sysname.lower(),
        "Arch": uname.machine,
        "KernelVersion": uname.release,
        "PythonVersion": platform.python_version(),
    }


@router.get("/system/info")
def system_info(engine: EngineDep) -> dict[str, Any]:
    """The host doctor: KVM, cgroups, seccomp, user namespaces, overlayfs, QEMU, runsc."""
    return engine.system_info()
