"""The fork choreography of a container start and of an exec.

    daemon ──fork──> monitor ──unshare(PID), fork──> workload (PID 1 in its namespaces)
                     │  (setsid; outlives the daemon)      joins cgroup, unshares the rest,
                     │                                      builds its root, drops privileges,
                     │  <── "ready" (+ pty master) ──────   waits for "go", execs
                     │  ──── "go" ──────────────────────>
                     │  <── EOF on exec, or exec error ──
    daemon <── status line (pid / error) ─┘, then EOF on that pipe once the exit is recorded

Monitors are forked from the daemon, or from a lean zygote the daemon starts first
(``zygote.py``): a 47 MiB daemon takes ~4 ms to fork, the zygote a fraction of that.

Only the daemon-side functions here return; everything after a fork ends in ``os._exit``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import pickle
import select
import signal
import socket
import sys
import termios
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from isobox import paths
from isobox.errors import EXIT_ISOBOX_ERROR, IsoboxError, RuntimeFailure
from isobox.logs import LogWriter
from isobox.net import rtnl
from isobox.runtimes.base import Launched
from isobox.runtimes.container import rootfs
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.cgroups import Cgroup, Limits, host_layout
from isobox.runtimes.container.config import ContainerConfig, ProcessConfig
from isobox.runtimes.container.monitor import ExitStatus, Pump, exit_code_of, write_file_atomic
from isobox.runtimes.container.process import (
    Identity,
    become,
    exec_workload,
    prepare_env,
    resolve_identity,
    seal,
)
from isobox.runtimes.container.process import rehearse as rehearse_process
from isobox.runtimes.container.setup import join_cgroup as _join_cgroup
from isobox.runtimes.container.setup import setup_container

CONTAINER_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP
START_TIMEOUT = 30.0
# A workload still running after this long is left to the C pump (pump.c): ~0.2 MiB instead
# of the ~2.3 MiB a Python monitor's copy-on-write pages come to.  Short runs never pay the exec.
HANDOVER_AFTER = 0.5
MAX_MESSAGE = 1 << 20  # the sync socket is SOCK_SEQPACKET: one message, one config
MAX_CGROUP_FDS = 16  # one join file per v1 hierarchy (cgroups.V1_CONTROLLERS), one on v2
ATTACH_TIMEOUT = 60.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGWINCH)




class SetupError(Exception):
    """A failure inside the child, carried back to the daemon as text."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, IsoboxError):
        return exc.message
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" if not exc.filename else f"{exc.filename}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _send(sock: socket.socket, msg: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _reset_signals() -> None:
    # The daemon's handlers (uvicorn's, asyncio's wakeup fd) must not run in a forked child,
    # and Python's SIG_IGN for SIGPIPE/SIGXFSZ would be inherited by the workload through exec.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _read_status(fd: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise RuntimeFailure(f"the container did not start within {timeout:.0f} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    if not data:
        raise RuntimeFailure("the container monitor died before reporting", hint="see isoboxd.log")
    return json.loads(data)


@dataclass
class ContainerRequest:
    """Everything a container monitor needs; picklable, so that the zygote can take it.

    ``cfg`` is the ContainerConfig, pickled by the daemon: the monitor passes it on to its init
    as it is, first thing, and makes the cgroup (``cgroup_name``, ``limits``) while the init
    builds the container's root.  Both were in series before (~0.7 ms of a start).
    """

    cfg: bytes
    tty: bool
    interactive: bool
    cgroup_name: str
    limits: Limits
    wait_attach: bool
    exit_path: str
    sock_path: str | None


@dataclass
class ExecRequest:
    proc: ProcessConfig
    cgroup_files: list[str]


class MonitorBody(Protocol):
    """Another level's monitor (gVisor's runs runsc): picklable, and its ``serve`` is the whole
    body of the forked monitor after the common set-up of ``run_monitor``."""

    def serve(self, fds: dict[str, int]) -> None: ...


Request = ContainerRequest | ExecRequest | MonitorBody


def become_monitor() -> None:
    """What every freshly forked monitor does first: its own session, default signals, no GC."""
    os.setsid()
    _reset_signals()
    gc.disable()
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)


@dataclass
class Prepared:
    """A PID namespace and its init, forked ahead of any request (the zygote's pool), waiting
    on ``sync`` for the config: the two forks of a start happen before it is asked for."""

    child: int
    sync: socket.socket
    # A pooled monitor's pipe to the zygote: a byte there has it fork our replacement.  We
    # send it once our workload runs, so that the replacement's forks and namespace set-up
    # do not compete with this start for the CPU.
    slot_fd: int = -1

    def release_slot(self) -> None:
        if self.slot_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.slot_fd, b"!")
                os.close(self.slot_fd)
            self.slot_fd = -1

    def discard(self) -> None:
        """Not a container request after all: let the init go and fork into our own
        PID namespace again (a namespace whose init has died refuses new processes)."""
        self.sync.close()  # EOF: the waiting child exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.child, 0)
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(own, sc.CLONE_NEWPID)
        finally:
            os.close(own)


def sample_config(sample: bytes) -> bytes:
    """The config of a past request (pickled), for a pooled init to rehearse with."""
    request, _names = pickle.loads(sample)
    return request.cfg if isinstance(request, ContainerRequest) else b""


def rehearse(sample: bytes, prepared: Prepared) -> None:
    """What an idle monitor does before its request so that the start does not pay the
    copy-on-write faults of a first run (zygote._fork_idle): unpickle a past request (if
    any), make and close the stdio pipes, and set up and drop a pump on its waiting init, as
    after the handshake.  Only a rehearsal: whatever fails here is for the real start to meet,
    not the idle monitor."""
    with contextlib.suppress(Exception):
        if sample:
            pickle.loads(sample)
        stdio, outputs, _stdin = _stdio_pipes(False, False)
        for fd in {*stdio, *outputs}:
            os.close(fd)
        json.dumps({"pid": prepared.child, "start": sc.process_start_time(prepared.child)})
        Pump(prepared.child, None, {}, None, None, None).close()


def prepare_container_child(rehearsal: bytes = b"") -> Prepared:
    sync, child_sync = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sc.unshare(sc.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        sync.close()
        sample = None
        if rehearsal:
            with contextlib.suppress(Exception):
                sample = pickle.loads(rehearsal)  # as it will unpickle its own config (see ``rehearse``)
        _prepared_child(child_sync, sample)
    child_sync.close()
    return Prepared(child, sync)


def stage_directory() -> str:
    """Where pooled inits stage /proc, /sys and /dev, each on a tmpfs of its own mount namespace."""
    return str(paths.run_root() / "stage")


# What a pooled init can do before it knows its container: a new network namespace costs
# ~1 ms, and neither it nor the mount, UTS and IPC namespaces depend on the config.  (The
# cgroup namespace must wait: it is rooted where the process is when it is created.)
AHEAD_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET


def _rehearse_init(sample: ContainerConfig | None) -> None:
    """The rest of an init's path that can run ahead without changing anything (see
    ``rehearse_process``): the default signals it already has, a "ready" with an fd through a
    throwaway socket pair, and the seal's Python side (a close_range above every fd, the seccomp
    program built but not loaded): ~60 first-touch page faults off the start's critical path."""
    _reset_signals()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _send(ours, {"ready": True}, [fd])
        _data, received, _flags, _addr = socket.recv_fds(theirs, 64, 1)
        for extra in received:
            os.close(extra)
        theirs.sendall(b"go")
        ours.recv(16)
    finally:
        os.close(fd)
        ours.close()
        theirs.close()
    sc.close_range_from(1 << 30)  # nothing is open that high
    if sample is not None and sample.process.seccomp_bpf:
        sc.seccomp_program(sample.process.seccomp_bpf)


def _prepared_child(sync: socket.socket, sample: ContainerConfig | None = None) -> None:
    try:
        # Kept from the host side of the unshare: eth0's peer is made there (setup.plug_interface).
        host_net = (rtnl.open_socket(), os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        sc.unshare(AHEAD_NAMESPACES)
        sc.loopback_up()
        stage_dir = stage_directory()
        staged: str | None = stage_dir
        try:
            rootfs.stage(stage_dir)  # (the zygote made the directory: an init makes nothing on the host)
        except OSError:
            staged = None  # the container's own set-up mounts them; what was staged goes with us
        with contextlib.suppress(Exception):  # only a rehearsal: the start meets real errors
            rehearse_process()
        with contextlib.suppress(Exception):
            _rehearse_init(sample)
        del sample
        data, fds, _flags, _addr = socket.recv_fds(sync, MAX_MESSAGE, 3)
        if data:
            _container_child(pickle.loads(data), sync, (fds[0], fds[1], fds[2]), AHEAD_NAMESPACES, host_net,
                             staged)
    finally:
        os._exit(1)


def run_monitor(request: Request, fds: dict[str, int], prepared: Prepared | None = None) -> None:
    """The body of a freshly forked monitor (from the daemon or the zygote); never returns.

    ``fds`` holds ``status`` (the pipe to the daemon) and, as the request needs them,
    ``listener``, ``log`` and ``pidfd``.  ``prepared``: a pool monitor's pre-forked init.
    """
    code = 1
    status_fd = fds["status"]
    try:
        if prepared is None:
            become_monitor()
        keep = (*fds.values(), _init_fd)
        if prepared is not None:
            keep += (prepared.sync.fileno(), prepared.slot_fd)
        sc.close_range_from(3, keep)
        if isinstance(request, ContainerRequest):
            _container_monitor(request, fds, prepared)
        else:
            if prepared is not None:
                prepared.release_slot()
                prepared.discard()
            if isinstance(request, ExecRequest):
                _exec_monitor(request, fds)
            else:
                request.serve(fds)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported through the status pipe
        with contextlib.suppress(OSError):
            os.write(status_fd, json.dumps({"error": _describe(exc)}).encode() + b"\n")
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        if prepared is not None:
            prepared.release_slot()
        os._exit(code)


_zygote: Callable[[Request, dict[str, int]], None] | None = None


def use_zygote(spawn: Callable[[Request, dict[str, int]], None] | None) -> None:
    """Route monitor forks through a lean pre-forked process (see ``zygote.py``)."""
    global _zygote
    _zygote = spawn


# isobox-init (init.c) in a sealed memfd, made once by the zygote (or the daemon) and inherited
# by every monitor and init: /proc/1/exe of an --init container is then a file nobody can
# write (runc's answer to CVE-2019-5736) and no host path.  -1 when it is not built.
_init_fd = -1
MFD_EXEC = 0x10  # (not in Python 3.11's os): says "executable" to kernels that ask (>= 6.3)


def load_init() -> int:
    """The memfd of isobox-init (ISOBOX_INIT overrides its path), made on the first call."""
    global _init_fd
    if _init_fd >= 0:
        return _init_fd
    path = os.environ.get("ISOBOX_INIT") or os.path.join(sys.prefix, "libexec", "isobox-init")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return -1
    try:
        fd = os.memfd_create("isobox-init", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_EXEC)
    except OSError:  # a kernel older than MFD_EXEC
        fd = os.memfd_create("isobox-init", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                | fcntl.F_SEAL_SEAL)
    _init_fd = fd
    return fd


def pump_binary() -> str | None:
    """The C pump built by scripts/setup.sh next to the interpreter (ISOBOX_PUMP overrides)."""
    path = os.environ.get("ISOBOX_PUMP") or os.path.join(sys.prefix, "libexec", "isobox-pump")
    return path if os.access(path, os.X_OK) else None


def zygote_active() -> bool:
    return _zygote is not None


def _spawn(request: Request, fds: dict[str, int], timeout: float) -> tuple[dict[str, object], int]:
    """Start a monitor; returns its status line and the read end of its status pipe, which
    reaches EOF when the monitor has finished (after writing the exit file)."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    all_fds = {"status": status_w, **fds}
    direct_pid = 0
    try:
        if _zygote is not None:
            _zygote(request, all_fds)
        else:
            load_init()
            gc.freeze()  # what the monitor never touches stays shared (copy-on-write)
            direct_pid = os.fork()
            if direct_pid == 0:
                run_monitor(request, all_fds)
    finally:
        os.close(status_w)
    try:
        status = _read_status(status_r, timeout)
        if "error" in status:
            raise RuntimeFailure(str(status["error"]))
    except BaseException:
        os.close(status_r)
        if direct_pid:
            os.waitpid(direct_pid, 0)
        raise
    return status, status_r


def spawn_monitor(request: MonitorBody, fds: dict[str, int], timeout: float = START_TIMEOUT) -> Launched:
    """Start another level's monitor like a container's; it reports its status line with
    ``report_started`` and the returned ``done_fd`` reaches EOF when it has finished."""
    status, done_fd = _spawn(request, fds, timeout)
    return Launched(_int(status["pid"]), _int(status.get("start")), _int(status["monitor"]),
                    _int(status.get("monitor_start")), done_fd)


def _stdio_pipes(tty: bool, interactive: bool) -> tuple[tuple[int, int, int], dict[int, int], int | None]:
    """(child's stdin/stdout/stderr, our output fds -> stream, our stdin write end)."""
    if tty:
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        return (null, null, null), {}, None
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    if interactive:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        return (in_r, out_w, err_w), {out_r: 1, err_r: 2}, in_w
    return (os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), out_w, err_w), {out_r: 1, err_r: 2}, None


def _attach_stdio(proc: ProcessConfig, sync: socket.socket, stdio: tuple[int, int, int]) -> None:
    """Make fds 0-2 the workload's; with a tty, open it in the container's devpts and hand
    the master to the monitor (so ``tty`` inside names a device the container can see)."""
    os.setsid()
    fds: list[int] = []
    if proc.tty:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        stdio = (slave, slave, slave)
        fds = [master]
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)  # dup2 clears O_CLOEXEC on the copy
    _send(sync, {"ready": True}, fds)
    for fd in {*stdio, *fds}:
        if fd > 2:
            os.close(fd)


def _wait_go(sync: socket.socket) -> None:
    if sync.recv(16) != b"go":
        os._exit(1)  # the monitor gave up on us


def _exec_or_report(proc: ProcessConfig, env: dict[str, str], sync: socket.socket) -> None:
    code, message = exec_workload(proc, env, keep_fds=(sync.fileno(),))
    with contextlib.suppress(OSError):
        _send(sync, {"exec_error": message, "code": code})
    os._exit(code)


def _exec_init(proc: ProcessConfig, env: dict[str, str], sync: socket.socket) -> None:
    """``--init``: become isobox-init (init.c), which forks the workload, reaps zombies,
    forwards signals and exits with the workload's code; it reports the workload's exec
    errors on ``sync`` itself."""
    if _init_fd < 0:
        _send(sync, {"exec_error": "--init needs isobox-init, which is not built: run scripts/setup.sh",
                     "code": EXIT_ISOBOX_ERROR})
        os._exit(EXIT_ISOBOX_ERROR)
    seal(proc, (sync.fileno(), _init_fd))
    os.set_inheritable(sync.fileno(), True)
    try:
        os.execve(_init_fd, ["isobox-init", "--sync-fd", str(sync.fileno()), "--", *proc.argv], env)
    except OSError as exc:
        _send(sync, {"exec_error": f"cannot run isobox-init: {exc.strerror}", "code": EXIT_ISOBOX_ERROR})
    os._exit(EXIT_ISOBOX_ERROR)


def _finish_process(proc: ProcessConfig, ident: Identity, hostname: str | None,
                    sync: socket.socket, stdio: tuple[int, int, int], init: bool) -> None:
    env = prepare_env(proc, ident, hostname)
    if proc.cwd != "/":
        os.makedirs(proc.cwd, exist_ok=True)  # Docker creates a missing working directory
    become(proc, ident)
    _attach_stdio(proc, sync, stdio)
    _wait_go(sync)
    try:
        os.chdir(proc.cwd)
    except OSError as exc:
        _send(sync, {"exec_error": f"chdir to cwd ({proc.cwd}) set in config: {exc.strerror}", "code": 126})
        os._exit(126)
    if init:
        _exec_init(proc, env, sync)
    _exec_or_report(proc, env, sync)


def _container_child(cfg: ContainerConfig, sync: socket.socket, stdio: tuple[int, int, int],
                     ahead: int = 0, host_net: tuple[socket.socket, int] | None = None,
                     staged: str | None = None) -> None:
    """``ahead``: namespaces a pooled init created before its request (lo already up);
    ``staged``: where it mounted /proc, /sys and /dev ahead (``rootfs.stage``)."""
    try:
        _reset_signals()
        setup_container(cfg, CONTAINER_NAMESPACES & ~ahead, host_net=host_net, staged=staged,
                        late_join=lambda: _join_sent_cgroup(sync))
        if host_net is not None:
            host_net[0].close()
            os.close(host_net[1])
        ident = resolve_identity(cfg.process.user)
        _finish_process(cfg.process, ident, cfg.hostname, sync, stdio, cfg.init)
    except BaseException as exc:  # noqa: BLE001 - reported to the monitor
        with contextlib.suppress(OSError):
            _send(sync, {"error": _describe(exc)})
    os._exit(1)


def _join_sent_cgroup(sync: socket.socket) -> None:
    """Join the cgroup the monitor made while we built the root.  It sends the files to write
    "0" into already open: our root has no host /sys any more, and only a thread moving
    itself skips the kernel's global threadgroup lock (``Cgroup.self_join_files``)."""
    data, fds, _flags, _addr = socket.recv_fds(sync, 16, MAX_CGROUP_FDS)
    try:
        if data != b"cgroup":
            raise SetupError("the monitor gave up before the container's cgroup was made")
        for fd in fds:
            os.write(fd, b"0")
    finally:
        for fd in fds:
            os.close(fd)


def _send_cgroup(sync: socket.socket, cgroup: Cgroup) -> None:
    fds: list[int] = []
    try:
        for path in cgroup.self_join_files():
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        socket.send_fds(sync, [b"cgroup"], fds)
    finally:
        for fd in fds:
            os.close(fd)


def _exec_child(pidfd: int, cgroup_procs: list[str], proc: ProcessConfig, sync: socket.socket,
                stdio: tuple[int, int, int]) -> None:
    try:
        _reset_signals()
        sc.set_dumpable(False)  # CVE-2019-5736: nothing in the container may open our /proc/PID/exe
        _join_cgroup(cgroup_procs)
        sc.setns(pidfd, CONTAINER_NAMESPACES)
        os.close(pidfd)
        os.chdir("/")
        ident = resolve_identity(proc.user)
        _finish_process(proc, ident, None, sync, stdio, init=False)
    except BaseException as exc:  # noqa: BLE001
        with contextlib.suppress(OSError):
            _send(sync, {"error": _describe(exc)})
    os._exit(1)


def _handshake(sync: socket.socket, child: int) -> tuple[dict[str, object], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sync, 65536, 1)
    if not data:
        os.waitpid(child, 0)
        raise SetupError("the workload process died during set-up")
    msg = json.loads(data)
    if "error" in msg:
        os.waitpid(child, 0)
        raise SetupError(str(msg["error"]))
    return msg, fds


def _go_and_check_exec(sync: socket.socket, go: bool = True) -> tuple[int | None, str | None]:
    if go:
        sync.sendall(b"go")
    try:
        data = sync.recv(65536)
    except OSError:
        data = b""
    sync.close()
    if not data:
        return None, None  # EOF: exec succeeded (the socket is close-on-exec)
    msg = json.loads(data)
    return int(msg.get("code", 126)), str(msg.get("exec_error", "exec failed"))


def _pump_to_end(pump: Pump, exec_error: tuple[int | None, str | None],
                 oom_check: Callable[[], bool] | None, handover: list[str] | None = None) -> ExitStatus:
    """Pump to the end; with ``handover`` (the C pump's remaining arguments) and the C pump
    built, a workload still running after HANDOVER_AFTER is left to it: this process execs."""
    binary = pump_binary() if handover is not None else None
    status = pump.run(HANDOVER_AFTER if binary else None)
    if status is None:
        assert binary is not None and handover is not None
        code, message = exec_error
        args = pump.handover_args() + handover
        if code is not None:
            args += ["--exit-code", str(code), "--error", message or ""]
        try:
            os.execv(binary, [binary, *args])
        except OSError:
            status = pump.run()  # keep pumping in Python
    assert status is not None
    code, message = exec_error
    exit_code = code if code is not None else exit_code_of(status)
    oom = False
    if oom_check is not None:
        with contextlib.suppress(Exception):
            oom = oom_check() and exit_code == 137
    return ExitStatus(exit_code, oom, message, time.time())


def _container_monitor(req: ContainerRequest, fds: dict[str, int], prepared: Prepared | None) -> None:
    status_fd = fds["status"]
    listener = socket.socket(fileno=fds["listener"]) if "listener" in fds else None
    stdio, outputs, stdin_w = _stdio_pipes(req.tty, req.interactive)
    if prepared is None:
        prepared = prepare_container_child()
    child, sync = prepared.child, prepared.sync
    socket.send_fds(sync, [req.cfg], list(stdio))  # it builds the root while we make the cgroup
    for fd in set(stdio):
        os.close(fd)
    cgroup: Cgroup | None = None

    def cleanup() -> None:
        if cgroup is not None:
            with contextlib.suppress(Exception):
                cgroup.destroy()
        if req.sock_path:
            with contextlib.suppress(OSError):
                os.unlink(req.sock_path)

    try:
        cgroup = Cgroup.create(host_layout(), req.cgroup_name, req.limits)
        with contextlib.suppress(OSError):  # an init that died has said why: read it next
            _send_cgroup(sync, cgroup)
        _msg, received = _handshake(sync, child)
    except BaseException:
        sync.close()  # an init still waiting for its cgroup exits on EOF
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
        cleanup()
        raise
    # Held so that the workload's exit does not tear its mount tree down (~20 mounts, ~3 ms)
    # before we hear of it: dropped once the exit is reported.  Close-on-exec: a workload left
    # to the C pump tears its tree down itself, as it would without us.  Opened before "go":
    # a workload that has already exited (a zombie) has no namespaces left to open.
    mount_ns = os.open(f"/proc/{child}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if not req.wait_attach:
        sync.sendall(b"go")  # no client to wait for: it execs while we report and set up the pump
    pty = received[0] if received else None
    if pty is not None:
        outputs, stdin_w = {pty: 1}, pty
    _report(status_fd, child, {"cgroup": {"paths": [str(p) for p in cgroup.paths], "applied": cgroup.applied,
                                          "warnings": cgroup.warnings}})
    pump = Pump(child, listener, outputs, stdin_w, pty, LogWriter(fds["log"]))
    if req.wait_attach:
        pump.wait_first_client(ATTACH_TIMEOUT)
    oom_file = cgroup.oom_events_file()
    handover = ["--status", str(status_fd), "--exit-file", req.exit_path,
                *(["--oom-file", str(oom_file)] if oom_file else []),
                *[arg for path in cgroup.paths for arg in ("--rmdir", str(path))],
                *(["--unlink", req.sock_path] if req.sock_path else [])]
    os.set_inheritable(status_fd, True)
    exec_error = _go_and_check_exec(sync, go=req.wait_attach)
    if prepared is not None:
        prepared.release_slot()
    result = _pump_to_end(pump, exec_error, cgroup.oom_killed, handover)
    write_file_atomic(req.exit_path, json.dumps(result.to_json()).encode(), durable=False)
    pump.finish(result)
    os.close(status_fd)  # EOF: the exit is recorded; the daemon can answer `wait` now
    cleanup()  # the daemon waits for our exit (not this EOF) before it reuses or removes things
    os.close(mount_ns)


def _exec_monitor(req: ExecRequest, fds: dict[str, int]) -> None:
    sc.set_dumpable(False)
    proc, pidfd, status_fd = req.proc, fds["pidfd"], fds["status"]
    listener = socket.socket(fileno=fds["listener"])
    stdio, outputs, stdin_w = _stdio_pipes(proc.tty, proc.interactive)
    sync, child_sync = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sc.setns(pidfd, sc.CLONE_NEWPID)  # our children are born in the container's pid namespace
    child = os.fork()
    if child == 0:
        sync.close()
        _exec_child(pidfd, req.cgroup_files, proc, child_sync, stdio)
    child_sync.close()
    os.close(pidfd)
    for fd in set(stdio):
        os.close(fd)
    _msg, received = _handshake(sync, child)
    pty = received[0] if received else None
    if pty is not None:
        outputs, stdin_w = {pty: 1}, pty
    _report(status_fd, child)
    pump = Pump(child, listener, outputs, stdin_w, pty, None)
    pump.wait_first_client(ATTACH_TIMEOUT)
    pump.finish(_pump_to_end(pump, _go_and_check_exec(sync), None))
    os.close(status_fd)


def report_started(status_fd: int, child: int) -> None:
    """The monitor's status line to the daemon: the workload's pid and ours, with start times."""
    _report(status_fd, child)


def _report(status_fd: int, child: int, details: dict[str, object] | None = None) -> None:
    me = os.getpid()
    line = {"pid": child, "start": sc.process_start_time(child), "monitor": me,
            "monitor_start": sc.process_start_time(me), **(details or {})}
    os.write(status_fd, json.dumps(line).encode() + b"\n")


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, str)) else 0


def start_container(cfg: ContainerConfig, limits: Limits, *, listener: socket.socket | None, wait_attach: bool,
                    log_fd: int, exit_path: str, sock_path: str | None) -> Launched:
    """Start the container; returns once its process is set up (or raises RuntimeFailure).
    The monitor makes the cgroup (named ``cfg.id``); ``details["cgroup"]`` of the result
    says what it made: paths, applied limits, warnings."""
    fds = {"log": log_fd} | ({"listener": listener.fileno()} if listener is not None else {})
    request = ContainerRequest(pickle.dumps(cfg), cfg.process.tty, cfg.process.interactive, cfg.id, limits,
                               wait_attach, exit_path, sock_path)
    status, done_fd = _spawn(request, fds, START_TIMEOUT)
    return Launched(_int(status["pid"]), _int(status.get("start")), _int(status["monitor"]),
                    _int(status.get("monitor_start")), done_fd, {"cgroup": status.get("cgroup", {})})


def start_exec(pidfd: int, cgroup_files: list[str], proc: ProcessConfig, listener: socket.socket) -> Launched:
    """Run ``proc`` inside a running container.  The exit code reaches the attached client in
    the EXIT frame; ``done_fd`` reaches EOF when the exec's monitor is finished."""
    status, done_fd = _spawn(ExecRequest(proc, cgroup_files), {"pidfd": pidfd, "listener": listener.fileno()},
                             START_TIMEOUT)
    return Launched(_int(status["pid"]), _int(status.get("start")), _int(status["monitor"]),
                    _int(status.get("monitor_start")), done_fd)
