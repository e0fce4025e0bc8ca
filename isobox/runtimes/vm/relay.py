"""The guest's stdio relay (``isobox-run --relay``/``--pty``, ``guestrun.c``) as the host sees it.

A microVM's workload, and every ``exec -t`` session, runs behind a relay in the guest that
speaks isobox's attach framing (``attach.HEADER``) over one virtio-serial port:

    host -> guest  STDIN bytes, STDIN_EOF, RESIZE "ROWS COLS", SIGNAL "N"
    guest -> host  READY "PID" (first), STDOUT/STDERR bytes, EXIT "CODE" (last)

With ``--pty`` the workload has a pty allocated in the guest (one output stream, RESIZE
applies); with ``--relay`` pipes (stdout and stderr apart).  The client's RESIZE is JSON; the
relay is a small static C program, so the host translates it into two numbers rather than teach
the C side JSON.  Ports: ``io`` for the workload (the monitor's end), one hot-plugged per
``exec -t`` session (``ptyexec.py``'s).
"""

from __future__ import annotations

import json
import signal
from enum import IntEnum

from isobox.attach import HEADER, Frame, FrameDecoder, encode
from isobox.runtimes.vm.qemu import IO_PORT

WORKLOAD_PORT = IO_PORT
EXEC_PORT_PREFIX = "ptyx-"  # + hex: an exec -t session's chardev id, device id, port and socket name


class GuestFrame(IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    EXIT = 3
    RESIZE = 5
    SIGNAL = 6
    STDIN_EOF = 7
    READY = 8


def to_guest(kind: Frame, payload: bytes) -> bytes:
    """A client's frame as the relay takes it; b"" for what it does not take or what is invalid."""
    if kind == Frame.STDIN:
        return _encode(GuestFrame.STDIN, payload) if payload else b""
    if kind == Frame.STDIN_EOF:
        return _encode(GuestFrame.STDIN_EOF)
    if kind == Frame.RESIZE:
        try:
            size = json.loads(payload)
            rows, cols = int(size["rows"]), int(size["cols"])
        except (ValueError, TypeError, KeyError):
            return b""
        if not (0 < rows < 65536 and 0 < cols < 65536):
            return b""
        return _encode(GuestFrame.RESIZE, b"%d %d" % (rows, cols))
    if kind == Frame.SIGNAL:
        try:
            signum = int(payload)
        except ValueError:
            return b""
        return _encode(GuestFrame.SIGNAL, b"%d" % signum) if 0 < signum < signal.NSIG else b""
    return b""


def _encode(kind: GuestFrame, payload: bytes = b"") -> bytes:
    return HEADER.pack(int(kind), len(payload)) + payload


class GuestDecoder(FrameDecoder[GuestFrame]):
    """The relay's frames (attach.Decoder knows only the client's types)."""

    def __init__(self) -> None:
        super().__init__(GuestFrame, "the guest's relay")


def number(payload: bytes) -> int | None:
    """READY's pid, EXIT's code."""
    try:
        return int(payload)
    except ValueError:
        return None


def output_frame(kind: GuestFrame, payload: bytes) -> bytes:
    """The relay's STDOUT/STDERR as a client's frame of the same stream."""
    return encode(Frame.STDERR if kind == GuestFrame.STDERR else Frame.STDOUT, payload)
