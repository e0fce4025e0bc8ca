"""The stream protocol between a workload's monitor and an attached client.

Frames are Docker's multiplexed-stream header (8 bytes: stream type, three zero bytes, a
big-endian 32-bit length) followed by the payload, extended with control frame types.  The
same framing carries ``logs`` over the API, so one decoder serves both.

    monitor -> client: STDOUT, STDERR, EXIT (JSON {"exit_code", "oom_killed", "error"}), ERROR (text)
    client -> monitor: STDIN, STDIN_EOF, RESIZE (JSON {"rows", "cols"}), SIGNAL (signal number, text)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from enum import IntEnum
from typing import Any, Generic, TypeVar

HEADER = struct.Struct(">B3xI")
MAX_FRAME = 1 << 20


class Frame(IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    EXIT = 3
    ERROR = 4
    RESIZE = 5
    SIGNAL = 6
    STDIN_EOF = 7


def encode(kind: Frame, payload: bytes = b"") -> bytes:
    return HEADER.pack(int(kind), len(payload)) + payload


def encode_json(kind: Frame, obj: Any) -> bytes:
    return encode(kind, json.dumps(obj).encode())


K = TypeVar("K", bound=IntEnum)


class FrameDecoder(Generic[K]):
    """Incremental decoder of ``HEADER``-framed messages whose types are ``kinds``: feed bytes,
    iterate complete frames."""

    def __init__(self, kinds: type[K], source: str = "") -> None:
        self._kinds = kinds
        self._source = f"{source}: " if source else ""  # who sent it, for the error
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[K, bytes]]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ValueError(f"{self._source}frame of {length} bytes is too large")
            if len(self._buf) < HEADER.size + length:
                return
            if kind not in self._kinds._value2member_map_:
                raise ValueError(f"{self._source}unknown frame type {kind}")
            payload = bytes(self._buf[HEADER.size : HEADER.size + length])
            del self._buf[: HEADER.size + length]
            yield self._kinds(kind), payload

    @property
    def pending(self) -> int:
        return len(self._buf)


class Decoder(FrameDecoder[Frame]):
    """The attach protocol's frames (a client's or a monitor's)."""

    def __init__(self) -> None:
        super().__init__(Frame)


def listen(path: str, backlog: int = 8) -> socket.socket:
    """A root-only listening socket at ``path`` (it carries a workload's stdio)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # never world-accessible, not even between bind and chmod
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    sock.connect(path)
    sock.settimeout(None)
    return sock
