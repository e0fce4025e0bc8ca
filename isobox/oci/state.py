"""The runtime's record of a container: ``<root>/<id>/state.json`` plus the exec fifo.

The fifo exists from ``create`` until ``start``: while it does, the container's process is
set up and blocked before exec ("created").  The status is never stored: it is derived from
the fifo and from the process (pid + start time, so a reused pid is not mistaken for it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re

from isobox.errors import Conflict, InvalidArgument, NotFound

DEFAULT_ROOT = "/run/isobox-runtime"
OCI_VERSION = "1.0.2"
FIFO = "exec.fifo"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}")


def check_id(container_id: str) -> str:
    if not _ID.fullmatch(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r}",
                              hint="use letters, digits and '_ . + -', starting with a letter or digit")
    return container_id


class State:
    """What state.json holds (a plain class: no dataclasses import on the start-up path)."""

    def __init__(self, id: str, pid: int, start_time: int, bundle: str, rootfs: str, created: str,
                 annotations: dict[str, str] | None = None, cgroup_parent: str = "", cgroup_name: str = "",
                 namespaces: int = 0, poststop: list[dict[str, object]] | None = None) -> None:
        self.id, self.pid, self.start_time, self.bundle, self.rootfs = id, pid, start_time, bundle, rootfs
        self.created, self.annotations = created, annotations or {}
        self.cgroup_parent, self.cgroup_name = cgroup_parent, cgroup_name
        self.namespaces = namespaces  # every CLONE_NEW* the container has (what exec joins)
        self.poststop = poststop or []


class StateDir:
    def __init__(self, root: str, container_id: str) -> None:
        self.root = root
        self.id = check_id(container_id)
        self.path = os.path.join(root, container_id)

    @property
    def fifo(self) -> str:
        return os.path.join(self.path, FIFO)

    def create(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            os.mkdir(self.path, 0o711)
        except FileExistsError:
            raise Conflict(f"container with id {self.id} already exists") from None
        os.mkfifo(self.fifo, 0o622)

    def save(self, state: State) -> None:
        tmp = os.path.join(self.path, "state.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(vars(state), fh)
        os.rename(tmp, os.path.join(self.path, "state.json"))

    def load(self) -> State:
        try:
            with open(os.path.join(self.path, "state.json")) as fh:
                return State(**json.load(fh))
        except FileNotFoundError:
            raise NotFound(f"container {self.id} does not exist") from None

    def remove(self) -> None:
        """Remove the directory; only this module's files are in it (no shutil on the start-up path)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, name))
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.path)


def process_alive(pid: int, start_time: int) -> bool:
    from isobox.runtimes.container.syscalls import process_start_time  # noqa: PLC0415

    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    if data[data.rindex(b")") + 2:].startswith(b"Z"):
        return False  # exited, not yet reaped by its parent (conmon)
    return process_start_time(pid) == start_time


def status(sdir: StateDir, state: State) -> str:
    if not process_alive(state.pid, state.start_time):
        return "stopped"
    if os.path.exists(sdir.fifo):
        return "created"
    return "paused" if os.path.exists(os.path.join(sdir.path, "paused")) else "running"


def document(sdir: StateDir, state: State) -> dict[str, object]:
    """The spec's state (runtime.md "State") plus runc's extra fields."""
    st = status(sdir, state)
    return {
        "ociVersion": OCI_VERSION, "id": state.id, "pid": state.pid if st != "stopped" else 0,
        "status": st, "bundle": state.bundle, "rootfs": state.rootfs, "created": state.created,
        "annotations": state.annotations, "owner": "",
    }


def all_ids(root: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir())
    except FileNotFoundError:
        return []
