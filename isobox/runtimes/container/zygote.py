"""A lean process, forked by the daemon before it loads its web stack, that forks monitors.

Forking the daemon itself (FastAPI, pydantic, uvicorn: ~47 MiB) costs ~4 ms per fork and gives
every monitor a copy-on-write share of all that; the zygote holds only the runtime modules.  It
takes pickled requests and their fds over a SOCK_SEQPACKET socketpair and forks; it reaps
nothing (SIGCHLD ignored) and dies with the daemon, while the monitors it forked live on.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import threading

from isobox.runtimes.container import launch
from isobox.runtimes.container import syscalls as sc

MAX_REQUEST = 1 << 20
MAX_FDS = 8


POOL_SIZE = 2  # idle monitors, each with its PID namespace's init already forked


class Zygote:
    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = threading.Lock()

    def spawn(self, request: launch.Request, fds: dict[str, int]) -> None:
        """Hand the request to whichever idle monitor takes it first."""
        payload = pickle.dumps((request, list(fds)))
        with self._lock:
            socket.send_fds(self.sock, [payload], list(fds.values()))

    def close(self) -> None:
        self.sock.close()  # idle monitors see EOF and exit
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def start() -> Zygote:
    """Fork the zygote; call before any thread starts and before heavy imports."""
    # What an unpickled request names (volumes and /etc/hosts are isobox.spec.Mount): imported
    # once here rather than by each monitor and again by each init, ~8 ms apiece on a start.
    import isobox.spec  # noqa: F401

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _serve(theirs, parent)
    theirs.close()
    return Zygote(ours, pid)


def _serve(sock: socket.socket, parent: int) -> None:
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
        sc.close_range_from(3, (sock.fileno(), taken_r, taken_w))
        gc.freeze()
        gc.disable()
        for _ in range(POOL_SIZE):
            _fork_idle(sock, taken_r, taken_w)
        while os.read(taken_r, 1):
            _fork_idle(sock, taken_r, taken_w)
    finally:
        os._exit(0)


def _fork_idle(sock: socket.socket, taken_r: int, taken_w: int) -> None:
    if os.fork() != 0:
        return
    code = 1
    prepared: launch.Prepared | None = None
    taken = False  # an idle monitor the daemon left (EOF) must not be replaced
    try:
        os.close(taken_r)
        launch.become_monitor()
        prepared = launch.prepare_container_child()
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
