"""The engine: everything the daemon does, independent of HTTP.

The daemon's routes are thin wrappers around these methods.  Methods are synchronous (the
daemon runs them in its thread pool) except ``wait`` and ``logs``, which are async because
they may block for as long as the workload runs.  Every method raises ``IsoboxError``
subclasses for anything the user can act on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from isobox.spec import WorkloadSpec
from isobox.state import StateStore


@dataclass
class StartInfo:
    id: str
    name: str
    attach_socket: str | None = None  # set when started with attach=True
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExecSpec:
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    interactive: bool = False
    privileged: bool = False


@dataclass
class ExecInfo:
    exec_id: str
    attach_socket: str


class Engine:
    def __init__(self, store: StateStore | None = None) -> None:
        raise NotImplementedError

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the engine the daemon's event loop, where it watches workload exits."""
        raise NotImplementedError

    def recover(self) -> None:
        """Reconcile the database with reality at daemon start (re-adopt, mark exited)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- containers ---------------------------------------------------------------------------
    def create(self, spec: WorkloadSpec) -> StartInfo:
        raise NotImplementedError

    def start(self, ref: str, attach: bool = False) -> StartInfo:
        """With attach=True the workload waits to exec until the first client connects to
        ``attach_socket``, so no output is lost."""
        raise NotImplementedError

    def run(self, spec: WorkloadSpec, attach: bool = False) -> StartInfo:
        """create + start; a failed start removes what create made."""
        raise NotImplementedError

    def stop(self, ref: str, timeout: int | None = None) -> None:
        raise NotImplementedError

    def kill(self, ref: str, signal: str | int = "KILL") -> None:
        raise NotImplementedError

    def remove(self, ref: str, force: bool = False) -> None:
        raise NotImplementedError

    def list(self, all: bool = False) -> list[dict[str, Any]]:
        raise NotImplementedError

    def inspect(self, ref: str) -> dict[str, Any]:
        raise NotImplementedError

    async def wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        """Returns ``{"StatusCode": int, "OOMKilled": bool, "Error": str|None}``.
        condition: "not-running" (default) or "removed" (also waits for auto-removal)."""
        raise NotImplementedError

    def logs(self, ref: str, follow: bool = False, tail: int | None = None,
             timestamps: bool = False) -> AsyncIterator[tuple[int, bytes]]:
        """Async iterator of (stream, data): stream 1 stdout, 2 stderr."""
        raise NotImplementedError

    def exec(self, ref: str, spec: ExecSpec) -> ExecInfo:
        raise NotImplementedError

    def stats(self, ref: str) -> dict[str, Any]:
        raise NotImplementedError

    # -- images -------------------------------------------------------------------------------
    def images(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def remove_image(self, ref: str, force: bool = False) -> list[str]:
        raise NotImplementedError

    def build_image(self, kind: str, tag: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    # -- system -------------------------------------------------------------------------------
    def system_info(self) -> dict[str, Any]:
        raise NotImplementedError
