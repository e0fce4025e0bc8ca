"""A lean process, started by the daemon (or any in-process Engine), that forks monitors.

Forking the daemon itself (FastAPI, pydantic, uvicorn: ~47 MiB) costs ~4 ms per fork and gives
every monitor a copy-on-write share of all that; the zygote holds only the runtime modules.  It
is a fresh interpreter (``python -m isobox.runtimes.container.zygote``), not a fork of its
starter, so that it stays lean whatever the starter imported: every container's init is a fork
of it, and the init's exec tears down all the anonymous memory it inherited, on the start's
critical path (a zygote forked from a process that had imported the engine gave inits ~16-18
MiB of it, against ~10).  It takes pickled requests and their fds over a SOCK_SEQPACKET
socketpair and forks; it reaps nothing (SIGCHLD ignored) and dies with its starter, while the
monitors it forked live on.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import socket
import sys
import threading

from isobox.runtimes.container import cgroups, launch
from isobox.runtimes.container import syscalls as sc

MAX_REQUEST = 1 << 20
MAX_FDS = 8


POOL_SIZE = 2  # idle monitors, each with its PID namespace's init already forked


class Zygote:
    def __init__(self, sock: socket.socket, pid: int, control: socket.socket) -> None:
        self.sock = sock
        self.pid = pid
        self._control = control
        self._sampled = False
        self._lock = threading.Lock()

    def spawn(self, request: launch.Request, fds: dict[str, int]) -> None:
        """Hand the request to whichever idle monitor takes it first."""
        payload = pickle.dumps((request, list(fds)))
        with self._lock:
            socket.send_fds(self.sock, [payload], list(fds.values()))
            if not self._sampled and isinstance(request, launch.ContainerRequest):
                # The zygote's future monitors rehearse with it (see ``_fork_idle``).  It stays
                # in isobox's own processes: monitors, and inits until their exec.
                self._sampled = True
                with contextlib.suppress(OSError):
                    self._control.send(payload, socket.MSG_DONTWAIT)

    def close(self) -> None:
        self.sock.close()  # idle monitors see EOF and exit
        self._control.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def start() -> Zygote:
    """Start the zygote: a new interpreter that inherits one end of each socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    control, control_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for end in (theirs, control_theirs):
            end.set_inheritable(True)  # only across this spawn: our copies are closed below
        # -P: the module comes from isobox's installation, never from the starter's working directory.
        argv = [sys.executable, "-P", "-m", __name__, str(theirs.fileno()), str(control_theirs.fileno()),
                str(os.getpid())]
        pid = os.posix_spawn(sys.executable, argv, dict(os.environ))
    except BaseException:
        for end in (ours, control):
            end.close()
        raise
    finally:
        theirs.close()
        control_theirs.close()
    return Zygote(ours, pid, control)


def _serve(sock: socket.socket, control: socket.socket, parent: int) -> None:
    """Keep POOL_SIZE idle monitors waiting on the request socket; fork a new one whenever
    one takes a request.  A start then costs no fork at all on its critical path.

    The zygote touches almost nothing between forks, on purpose: a page either side writes
    after a fork becomes private to both.
    """
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)  # the daemon died before we asked to die with it
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        taken_r, taken_w = os.pipe2(os.O_CLOEXEC)
        init_fd = launch.load_init()  # inherited by every monitor and init forked from here
        with contextlib.suppress(Exception):  # (a monitor meets the failure on its own)
            cgroups.host_layout()  # detected once here, not by every monitor making a cgroup
        # Made here, not by each pooled init: an idle monitor forked just before close() (a pool
        # refill) would make it again after its starter had removed the run root.  Without it
        # the inits mount /proc, /sys and /dev at start instead.
        with contextlib.suppress(OSError):
            os.makedirs(launch.stage_directory(), mode=0o700, exist_ok=True)
        sc.close_range_from(3, (sock.fileno(), control.fileno(), taken_r, taken_w, init_fd))
        gc.freeze()
        gc.disable()
        sample = b""
        for _ in range(POOL_SIZE):
            _fork_idle(sock, taken_r, taken_w, sample)
        watched = [taken_r, control.fileno()]
        while True:
            ready, _, _ = select.select(watched, [], [])
            if control.fileno() in ready:
                sample = control.recv(MAX_REQUEST)
                if not sample:
                    watched.remove(control.fileno())
            if taken_r in ready:
                if not os.read(taken_r, 1):
                    break
                _fork_idle(sock, taken_r, taken_w, sample)
    finally:
        os._exit(0)


def _fork_idle(sock: socket.socket, taken_r: int, taken_w: int, sample: bytes) -> None:
    """``sample``: a request the daemon sent before (pickled), or empty.  The new monitor and
    its init unpickle it while idle: in a process just forked from a Python parent, first
    touches of objects fault in copy-on-write copies of their pages (~10 us each in this VM,
    ~300 on an unpickle), and a rehearsal moves those faults off the start's critical path."""
    if os.fork() != 0:
        return
    code = 1
    prepared: launch.Prepared | None = None
    taken = False  # an idle monitor the daemon left (EOF) must not be replaced
    try:
        os.close(taken_r)
        launch.become_monitor()
        cfg_sample = launch.sample_config(sample) if sample else b""
        prepared = launch.prepare_container_child(cfg_sample)
        launch.rehearse(sample, prepared)  # after the fork: a fork write-protects every page again
        prepared.slot_fd = taken_w  # released once our workload runs (or we fail)
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        sock.close()
        taken = bool(data)
        if not data:
            prepared.discard()  # the daemon is gone
            code = 0
        else:
            request, names = pickle.loads(data)
            launch.run_monitor(request, dict(zip(names, fds, strict=True)), prepared)
    finally:
        if prepared is not None and taken:
            prepared.release_slot()  # whatever went wrong with the request, the pool must not shrink
        os._exit(code)


if __name__ == "__main__":
    # What an unpickled request names (volumes and /etc/hosts are isobox.spec.Mount): imported
    # once here rather than by each monitor and again by each init, ~8 ms apiece on a start.
    import isobox.spec  # noqa: F401

    _serve(socket.socket(fileno=int(sys.argv[1])), socket.socket(fileno=int(sys.argv[2])), int(sys.argv[3]))
