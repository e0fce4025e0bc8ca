"""The per-workload monitor: the small process that outlives the daemon.

It is forked from the daemon and forks the workload; it then moves bytes between the workload's
stdio, its log and any attached clients (``isobox/attach.py`` framing), and when the workload
ends writes its exit status to a file the daemon reads — now or after a restart.  Like
Podman's conmon, this is what lets ``isoboxd`` be killed and restarted without losing anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
from dataclasses import dataclass

from isobox import attach
from isobox.attach import Frame
from isobox.logs import LogWriter


@dataclass
class ExitStatus:
    exit_code: int
    oom_killed: bool = False
    error: str | None = None
    finished_at: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"exit_code": self.exit_code, "oom_killed": self.oom_killed, "error": self.error,
                "finished_at": self.finished_at}


def exit_code_of(wait_status: int) -> int:
    """Docker's convention: the exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def write_file_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """tmp (+ fsync) + rename (libvirt's way): readers see the old file or the whole new one.

    ``durable=False`` skips the fsync for files under the run root: they live on tmpfs in
    production and must survive a daemon crash, not a reboot (which ends the workloads too);
    on a disk-backed run root the fsync cost ~0.2-4 ms on every container exit here.
    """
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_exit_file(path: str) -> ExitStatus | None:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return ExitStatus(int(data["exit_code"]), bool(data.get("oom_killed")), data.get("error"),
                      float(data.get("finished_at") or 0))


class Pump:
    """The monitor's event loop over the workload's stdio, the attach socket and its pidfd."""

    def __init__(self, child_pid: int, listener: socket.socket | None, outputs: dict[int, int],
                 stdin_fd: int | None, pty_fd: int | None, log: LogWriter | None) -> None:
        self.child_pid = child_pid
        self.listener = listener
        self.stdin_fd = stdin_fd
        self.pty_fd = pty_fd
        self.log = log
        self.clients: list[socket.socket] = []
        self.decoders: dict[int, attach.Decoder] = {}
        self.sel = selectors.DefaultSelector()
        self.open_outputs = 0
        for fd, stream in outputs.items():
            self.sel.register(fd, selectors.EVENT_READ, ("out", stream))
            self.open_outputs += 1
        self.pidfd = os.pidfd_open(child_pid)
        self.sel.register(self.pidfd, selectors.EVENT_READ, ("exit", 0))
        if listener is not None:
            self.sel.register(listener, selectors.EVENT_READ, ("listen", 0))

    def close(self) -> None:
        """Drop a pump that will not run (a rehearsal's): its selector and pidfd."""
        self.sel.close()
        os.close(self.pidfd)

    def wait_first_client(self, timeout: float) -> None:
        """Block until a client attaches (or the timeout passes), so no output is missed."""
        if self.listener is None:
            return
        self.listener.settimeout(timeout)
        with contextlib.suppress(OSError):
            self._accept()
        self.listener.settimeout(None)

    def _accept(self) -> None:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        conn.setblocking(True)
        self.clients.append(conn)
        self.decoders[conn.fileno()] = attach.Decoder()
        self.sel.register(conn, selectors.EVENT_READ, ("client", 0))

    def broadcast(self, frame: bytes) -> None:
        for client in list(self.clients):
            try:
                client.sendall(frame)
            except OSError:
                self._drop(client)

    def _drop(self, client: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(client)
        self.decoders.pop(client.fileno(), None)
        if client in self.clients:
            self.clients.remove(client)
        client.close()

    def _on_output(self, fd: int, stream: int) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the pty's other side is gone
                raise
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.open_outputs -= 1
            return
        if self.log is not None:
            self.log.write(stream, data)
        self.broadcast(attach.encode(Frame(stream), data))

    def _on_client(self, client: socket.socket) -> None:
        try:
            data = client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        try:
            frames = list(self.decoders[client.fileno()].feed(data))
        except ValueError:
            self._drop(client)
            return
        for kind, payload in frames:
            self._on_frame(kind, payload)

    def _on_frame(self, kind: Frame, payload: bytes) -> None:
        if kind == Frame.STDIN and self.stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.stdin_fd, payload)
        elif kind == Frame.STDIN_EOF and self.stdin_fd is not None:
            if self.pty_fd is not None and self.stdin_fd == self.pty_fd:
                with contextlib.suppress(OSError):
                    os.write(self.pty_fd, b"\x04")  # a tty has no EOF of its own: send ^D
            else:
                os.close(self.stdin_fd)
                self.stdin_fd = None
        elif kind == Frame.RESIZE and self.pty_fd is not None:
            with contextlib.suppress(ValueError, KeyError, OSError):
                size = json.loads(payload)
                winsize = struct.pack("HHHH", int(size["rows"]), int(size["cols"]), 0, 0)
                fcntl.ioctl(self.pty_fd, termios.TIOCSWINSZ, winsize)
        elif kind == Frame.SIGNAL:
            with contextlib.suppress(ValueError, OSError):
                signal.pidfd_send_signal(self.pidfd, int(payload))

    def run(self, handover_after: float | None = None) -> int | None:
        """Pump until the workload has exited and its output is drained; returns the wait status.

        With ``handover_after``, returns None instead once the workload has run that long
        (and no client is mid-frame): the caller hands the fds to the C pump.
        """
        status: int | None = None
        drain_deadline = 0.0
        handover_at = None if handover_after is None else time.monotonic() + handover_after
        while status is None or (self.open_outputs and time.monotonic() < drain_deadline):
            if status is None and handover_at is not None:
                if time.monotonic() >= handover_at and not any(d.pending for d in self.decoders.values()):
                    return None
                timeout: float | None = max(0.0, handover_at - time.monotonic()) + 0.01
            else:
                timeout = None if status is None else max(0.0, drain_deadline - time.monotonic())
            for key, _ in self.sel.select(timeout):
                kind, stream = key.data
                if kind == "out":
                    self._on_output(key.fd, stream)
                elif kind == "client":
                    self._on_client(key.fileobj)  # type: ignore[arg-type]
                elif kind == "listen":
                    with contextlib.suppress(OSError):
                        self._accept()
                elif kind == "exit" and status is None:
                    _, status = os.waitpid(self.child_pid, 0)
                    self.sel.unregister(self.pidfd)
                    # The pid namespace is gone with its init, so every writer is closing
                    # now; a grace period only guards against a leaked fd elsewhere.
                    drain_deadline = time.monotonic() + 2.0
        return status

    def handover_args(self) -> list[str]:
        """The C pump's arguments for this pump's fds (made inheritable for the exec)."""
        args = ["--child", str(self.child_pid)]
        for key in self.sel.get_map().values():
            kind, stream = key.data
            if kind == "out":
                args += ["--out", f"{key.fd}:{stream}"]
            elif kind == "listen":
                args += ["--listener", str(key.fd)]
            elif kind == "client":
                args += ["--client", str(key.fd)]
            else:
                continue
            os.set_inheritable(key.fd, True)
        for flag, fd in (("--stdin", self.stdin_fd), ("--pty", self.pty_fd)):
            if fd is not None:
                os.set_inheritable(fd, True)
                args += [flag, str(fd)]
        if self.log is not None:
            os.set_inheritable(self.log.fd, True)
            args += ["--log", str(self.log.fd)]
        return args

    def finish(self, result: ExitStatus) -> None:
        self.broadcast(attach.encode_json(Frame.EXIT, result.to_json()))
        for client in list(self.clients):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)
            self._drop(client)
