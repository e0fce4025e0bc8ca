"""The runtime's record of a container: ``<root>/<id>/state.json`` plus the exec fifo.

The fifo exists from ``create`` until ``start``: while it does, the container's process is
set up and blocked before exec ("created").  The status is never stored: it is derived from
the fifo and from the process (pid + start time, so a reused pid is not mistaken for it).
"""

from __future__ import annotations

import os

from isobox.errors import Conflict, InvalidArgument, NotFound
from isobox.oci import jsonio

DEFAULT_ROOT = "/run/isobox-runtime"
OCI_VERSION = "1.0.2"
FIFO = "exec.fifo"
# A valid id: [A-Za-z0-9][A-Za-z0-9_.+-]{0,1023} (checked without re: see jsonio's docstring)
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.+-")


def check_id(container_id: str) -> str:
    if not (0 < len(container_id) <= 1024 and container_id[0] in _ID_FIRST
            and all(c in _ID_REST for c in container_id)):
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            data = jsonio.dumps(vars(state)).encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.path, "state.json"))

    def load(self) -> State:
        try:
            return State(**jsonio.loads(read_file(os.path.join(self.path, "state.json"))))
        except FileNotFoundError:
            raise NotFound(f"container {self.id} does not exist") from None

    def remove(self) -> None:
        """Remove the directory; only this module's files are in it (no shutil on the start-up path)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for name in names:
            try:  # noqa: SIM105 - (contextlib costs ms to import on this start-up path)
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
        try:  # noqa: SIM105
            os.rmdir(self.path)
        except FileNotFoundError:
            pass


def read_file(path: str) -> bytes:
    """A file's bytes through os.open/os.read: no io objects and no isatty probe (every runtime
    call reads a few small files)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (state) on; None if there is no such process."""
    try:
        data = read_file(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (as syscalls.process_start_time, without importing ctypes)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def process_alive(pid: int, started: int) -> bool:
    """Whether ``pid`` runs and is the process that started at ``started`` (not a reuse)."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if fields[0] == b"Z":
        return False  # exited, not yet reaped by its parent (conmon)
    return int(fields[19]) == started


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
