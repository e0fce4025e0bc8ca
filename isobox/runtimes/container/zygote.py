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


class Zygote:
    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = threading.Lock()

    def spawn(self, request: launch.Request, fds: dict[str, int]) -> None:
        payload = pickle.dumps((request, list(fds)))
        with self._lock:
            socket.send_fds(self.sock, [payload], list(fds.values()))

    def close(self) -> None:
        self.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def start() -> Zygote:
    """Fork the zygote; call before any thread starts and before heavy imports."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _serve(theirs, parent)
    theirs.close()
    return Zygote(ours, pid)


def _serve(sock: socket.socket, parent: int) -> None:
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)  # the daemon died before we asked to die with it
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sc.close_range_from(3, (sock.fileno(),))
        while True:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            if not data:
                os._exit(0)
            request, names = pickle.loads(data)
            gc.freeze()  # the fork's copy-on-write pages stay shared: no collector walks them
            if os.fork() == 0:
                sock.close()
                launch.run_monitor(request, dict(zip(names, fds, strict=True)))
            for fd in fds:
                os.close(fd)
    finally:
        os._exit(0)
