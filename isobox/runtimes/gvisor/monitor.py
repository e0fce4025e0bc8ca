"""The gVisor monitor: the container monitor's model with ``runsc`` as its child.

    daemon ──fork──> monitor ──fork──> child: joins the cgroup, mounts the overlay root in a
                     │                  private mount namespace, waits for "go",
                     │                  execs ``runsc run`` (which starts gofer + Sentry)
                     │  Pump: stdio -> CRI log + attach socket; SIGNAL frames -> ``runsc kill``
                     └─ exit file when ``runsc run`` ends, then ``runsc delete`` and the cgroup

The overlay lives only in the child's mount namespace, which the gofer and the sandbox
inherit: when they are gone, so is the mount -- nothing can leak onto the host's mount table.
Execs run ``runsc exec`` the same way, without the root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import socket
import subprocess
import termios
import time
from dataclasses import dataclass, field

from isobox import attach
from isobox.attach import Frame
from isobox.logs import LogWriter
from isobox.runtimes.container import launch
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.cgroups import Cgroup
from isobox.runtimes.container.monitor import ExitStatus, Pump, exit_code_of, write_file_atomic


@dataclass
class Overlay:
    lowerdirs: list[str]  # topmost first
    upperdir: str
    workdir: str
    target: str

    def options(self) -> str:
        return f"lowerdir={':'.join(self.lowerdirs)},upperdir={self.upperdir},workdir={self.workdir}"


@dataclass
class RunscCommand:
    """One ``runsc`` invocation under a monitor (``run`` of a sandbox, or ``exec`` in one)."""

    argv: list[str]
    runsc: str
    root: str  # runsc --root, for kill and delete
    container_id: str
    tty: bool
    interactive: bool
    wait_attach: bool
    cgroup_files: list[str] = field(default_factory=list)
    overlay: Overlay | None = None
    refused: tuple[int, str] | None = None  # Docker's 126/127, found before starting anything
    exit_path: str | None = None  # set for the sandbox's run, not for an exec
    cgroup: Cgroup | None = None
    sock_path: str | None = None
    process_file: str | None = None  # an exec's process.json, removed when it ends
    console_path: str | None = None  # with tty: runsc sends the pty master it made here

    def serve(self, fds: dict[str, int]) -> None:
        _serve(self, fds)


class RunscPump(Pump):
    """Signals from attached clients go to the workload through ``runsc kill``: signalling
    ``runsc run`` itself would tear the sandbox down."""

    def __init__(self, cmd: RunscCommand, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.cmd = cmd

    def _on_frame(self, kind: Frame, payload: bytes) -> None:
        if kind == Frame.SIGNAL and self.cmd.exit_path is not None:
            with contextlib.suppress(ValueError, OSError, subprocess.TimeoutExpired):
                subprocess.run([self.cmd.runsc, "--root", self.cmd.root, "kill", self.cmd.container_id,
                                str(int(payload))], capture_output=True, timeout=10)
            return
        super()._on_frame(kind, payload)


def _child(cmd: RunscCommand, sync: socket.socket, stdio: tuple[int, int, int], tty: int | None) -> None:
    try:
        for procs in cmd.cgroup_files:
            with open(procs, "w") as fh:
                fh.write("0")
        os.setsid()
        if tty is not None:
            fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
        if cmd.overlay is not None:
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            sc.mount("overlay", cmd.overlay.target, "overlay", 0, cmd.overlay.options())
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        sync.sendall(b"ready")
        if sync.recv(16) != b"go":
            os._exit(1)
        sc.close_range_from(3)
        if cmd.refused is not None:
            os._exit(cmd.refused[0])
        os.execv(cmd.argv[0], cmd.argv)
    except BaseException as exc:  # noqa: BLE001 - reported to the monitor
        with contextlib.suppress(OSError):
            sync.sendall(b"error " + str(exc).encode(errors="replace"))
    os._exit(1)


def _stdio(cmd: RunscCommand) -> tuple[tuple[int, int, int], dict[int, int], int | None, int | None, int | None]:
    """(child's stdio, outputs -> stream, stdin write end, pty master, pty slave)."""
    if cmd.tty and cmd.console_path is None:
        # ``runsc exec`` (attached) takes its own stdio as the process's terminal.
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        return (slave, slave, slave), {master: 1}, master, master, slave
    if cmd.tty:
        # runsc makes the terminal inside the sandbox and hands us its master (OCI
        # --console-socket): the workload's tty is one the Sentry knows, not a host pty.
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        return (null, null, null), {}, None, None, None
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    if cmd.interactive:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        return (in_r, out_w, err_w), {out_r: 1, err_r: 2}, in_w, None, None
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    return (null, out_w, err_w), {out_r: 1, err_r: 2}, None, None, None


def _serve(cmd: RunscCommand, fds: dict[str, int]) -> None:
    status_fd = fds["status"]
    listener = socket.socket(fileno=fds["listener"]) if "listener" in fds else None
    stdio, outputs, stdin_w, pty, slave = _stdio(cmd)
    console = _console_listener(cmd.console_path) if cmd.console_path else None
    sync, child_sync = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        sync.close()
        _child(cmd, child_sync, stdio, slave)
    child_sync.close()
    for fd in set(stdio):
        os.close(fd)
    answer = sync.recv(4096)
    if answer != b"ready":
        os.waitpid(child, 0)
        _cleanup(cmd)
        raise RuntimeError(answer.decode(errors="replace").removeprefix("error ") or "runsc's launcher died")
    log = LogWriter(fds["log"]) if "log" in fds else None
    pump = RunscPump(cmd, child, listener, outputs, stdin_w, pty, log)
    if cmd.wait_attach:
        launch.report_started(status_fd, child)
        pump.wait_first_client(launch.ATTACH_TIMEOUT)
    sync.sendall(b"go")
    sync.close()
    if console is not None:
        _take_console(pump, console)
    if not cmd.wait_attach:
        if cmd.exit_path is not None:
            _wait_running(cmd, child)  # so that an exec right after `run -d` finds the sandbox
        launch.report_started(status_fd, child)
    status = pump.run()
    assert status is not None  # no handover_after: it returns once runsc has ended
    code = exit_code_of(status)
    error = None
    if cmd.refused is not None:
        code, error = cmd.refused
    oom = False
    if cmd.cgroup is not None:
        with contextlib.suppress(Exception):
            oom = cmd.cgroup.oom_killed() and code == 137
    result = ExitStatus(code, oom, error, time.time())
    if cmd.exit_path is not None:
        write_file_atomic(cmd.exit_path, json.dumps(result.to_json()).encode(), durable=False)
    pump.finish(result)
    os.close(status_fd)  # EOF: the exit is recorded
    _cleanup(cmd)


def _wait_running(cmd: RunscCommand, child: int) -> None:
    """Until runsc's state file says running (or runsc ended, or START_TIMEOUT)."""
    state = os.path.join(cmd.root, f"{cmd.container_id}_sandbox:{cmd.container_id}.state")
    deadline = time.monotonic() + launch.START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError), open(state, "rb") as fh:
            if json.loads(fh.read()).get("status") in ("running", "stopped"):
                return
        if os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.002)


def _console_listener(path: str) -> socket.socket:
    return attach.listen(path, backlog=1)


def _take_console(pump: Pump, console: socket.socket) -> None:
    """Wait for runsc's pty master and make it the workload's stdio in the pump."""
    path = console.getsockname()
    console.settimeout(launch.START_TIMEOUT)
    try:
        conn, _ = console.accept()
        with conn:
            _data, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    except OSError:
        fds = []
    finally:
        console.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    if not fds:
        return  # runsc failed before making the terminal; its exit code tells
    master = fds[0]
    os.set_inheritable(master, False)
    pump.sel.register(master, selectors.EVENT_READ, ("out", 1))
    pump.open_outputs += 1
    pump.stdin_fd = pump.pty_fd = master


def _cleanup(cmd: RunscCommand) -> None:
    if cmd.exit_path is None:
        if cmd.process_file:
            with contextlib.suppress(OSError):
                os.unlink(cmd.process_file)
        return  # an exec: the sandbox is not ours to tear down
    from isobox.runtimes.gvisor import runsc

    with contextlib.suppress(Exception):
        runsc.delete(cmd.runsc, cmd.container_id, cmd.root)
    if cmd.cgroup is not None:
        with contextlib.suppress(Exception):
            cmd.cgroup.remove()
    if cmd.sock_path:
        with contextlib.suppress(OSError):
            os.unlink(cmd.sock_path)
