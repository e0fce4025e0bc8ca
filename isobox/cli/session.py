"""An attached session: our terminal <-> a workload's monitor, in the isobox/attach.py framing.

STDOUT/STDERR frames go to our stdout/stderr; with ``interactive`` our stdin becomes STDIN
frames (STDIN_EOF at its end); with ``tty`` our terminal is raw for the session and its size
follows SIGWINCH as RESIZE frames.  Signals the CLI receives are passed on as SIGNAL frames
(Docker's sig-proxy), so ``kill -TERM <isobox run>`` and Ctrl-C reach the workload.  The
session ends with the EXIT frame, or when the monitor closes the connection.

Writes to the monitor are buffered and non-blocking: the monitor may be busy writing output to
us while we have stdin for it, and blocking on either side would deadlock both.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

from isobox.attach import Decoder, Frame, connect, encode, encode_json
from isobox.errors import IsoboxError

PROXIED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STDIN_HIGH_WATER = 1 << 18  # stop reading stdin while this much waits for the monitor


class ExitInfo(NamedTuple):  # not a dataclass: importing dataclasses costs more than all of this
    exit_code: int
    oom_killed: bool = False
    error: str | None = None


class Output:
    """Our stdout/stderr for workload bytes; a closed pipe (``| head``) silences, not kills."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream: BinaryIO | None = stream

    def write(self, data: bytes) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except OSError as exc:
            # A closed pipe (EPIPE), or a terminal that hung up (EIO): nobody reads any more; the
            # workload runs on and we still report its exit code, as after a broken pipe.
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.stream = None


def std_streams() -> tuple[Output, Output]:
    return Output(sys.stdout.buffer), Output(sys.stderr.buffer)


def attach(socket_path: str, *, interactive: bool = False, tty: bool = False,
           stdin_fd: int = 0) -> ExitInfo | None:
    """Run the session to its end: the EXIT frame's content, or None if the monitor went away."""
    out, err = std_streams()
    with _signals(tty) as wakeup:
        try:
            sock = connect(socket_path)
        except OSError as exc:
            raise IsoboxError(f"cannot attach to the workload at {socket_path}: {exc.strerror or exc}") from None
        try:
            with _raw_terminal(stdin_fd if tty and interactive else None):
                return _pump(sock, wakeup, out, err, interactive, tty, stdin_fd)
        except ValueError as exc:  # the decoder's: not our framing
            raise IsoboxError(f"bad stream from the workload's monitor: {exc}") from None
        finally:
            sock.close()


class _Pending:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def handler(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)


@contextlib.contextmanager
def _signals(tty: bool) -> Iterator[tuple[int, _Pending]]:
    """Catch the proxied signals (and SIGWINCH) into a list, and wake the poll loop for them."""
    pending = _Pending()
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    wanted = PROXIED_SIGNALS + ((signal.SIGWINCH,) if tty else ())
    old = {sig: signal.signal(sig, pending.handler) for sig in wanted}
    try:
        yield rfd, pending
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(rfd)
        os.close(wfd)


@contextlib.contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    if fd is None or not os.isatty(fd):
        yield
        return
    import termios
    import tty as ttymod

    saved = termios.tcgetattr(fd)
    ttymod.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> dict[str, int] | None:
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return {"rows": size.lines, "cols": size.columns}
    return None


def _pump(sock: socket.socket, wakeup: tuple[int, _Pending], out: Output, err: Output,
          interactive: bool, tty: bool, stdin_fd: int) -> ExitInfo | None:
    wake_fd, pending = wakeup
    sock.setblocking(False)
    outbuf = bytearray()
    decoder = Decoder()
    stdin_open = interactive
    if tty and (size := terminal_size()):
        outbuf += encode_json(Frame.RESIZE, size)
    poller = select.poll()
    poller.register(wake_fd, select.POLLIN)
    while True:
        sock_events = select.POLLIN | (select.POLLOUT if outbuf else 0)
        poller.register(sock, sock_events)
        reading_stdin = stdin_open and len(outbuf) < STDIN_HIGH_WATER
        if reading_stdin:
            poller.register(stdin_fd, select.POLLIN)
        else:
            with contextlib.suppress(KeyError):
                poller.unregister(stdin_fd)
        for fd, events in poller.poll():
            if fd == wake_fd:
                _drain(wake_fd)
                while pending.signals:
                    signum = pending.signals.pop(0)
                    if signum == signal.SIGWINCH:
                        if size := terminal_size():
                            outbuf += encode_json(Frame.RESIZE, size)
                    else:
                        outbuf += encode(Frame.SIGNAL, str(signum).encode())
            elif fd == stdin_fd and reading_stdin:
                data = _read(stdin_fd)
                if data:
                    outbuf += encode(Frame.STDIN, data)
                elif data is not None:
                    stdin_open = False
                    outbuf += encode(Frame.STDIN_EOF)
            elif fd == sock.fileno():
                if events & select.POLLOUT and outbuf:
                    outbuf = _send(sock, outbuf)
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        return None
                    for kind, payload in decoder.feed(data):
                        if kind == Frame.STDOUT:
                            out.write(payload)
                        elif kind == Frame.STDERR:
                            err.write(payload)
                        elif kind == Frame.ERROR:
                            err.write(payload.rstrip(b"\n") + b"\n")
                        elif kind == Frame.EXIT:
                            return exit_info(payload)


def exit_info(payload: bytes) -> ExitInfo:
    try:
        doc = json.loads(payload)
        return ExitInfo(int(doc.get("exit_code") or 0), bool(doc.get("oom_killed")), doc.get("error") or None)
    except (ValueError, TypeError, AttributeError):
        return ExitInfo(125, error=f"bad EXIT frame from the monitor: {payload[:80]!r}")


def _read(fd: int) -> bytes | None:
    """Some input, b"" at its end, None when there is nothing after all (a non-blocking stdin)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # EIO from a hung-up terminal, EBADF from a closed stdin: the end


def _send(sock: socket.socket, buf: bytearray) -> bytearray:
    try:
        sent = sock.send(buf)
    except BlockingIOError:
        return buf
    except (BrokenPipeError, ConnectionResetError):
        return bytearray()  # the monitor is gone; its close ends the session
    del buf[:sent]
    return buf


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 512):
            pass
