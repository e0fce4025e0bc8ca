"""Container logs in the CRI log format (what Kubernetes' kubelet and CRI-O write).

One line per chunk of a line: ``<RFC3339Nano time> <stdout|stderr> <F|P> <content>``; ``P``
marks a partial line (no newline followed yet), ``F`` a full one.  Plain text, greppable,
and appendable without rewriting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

STREAMS = {1: b"stdout", 2: b"stderr"}
STREAM_IDS = {b"stdout": 1, b"stderr": 2}


def timestamp(now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    secs = int(now)
    nanos = int((now - secs) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % nanos


def encode(stream: int, data: bytes, now: float | None = None) -> bytes:
    prefix = timestamp(now) + b" " + STREAMS[stream]
    lines = data.split(b"\n")
    out = [prefix + b" F " + line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(prefix + b" P " + lines[-1] + b"\n")
    return b"".join(out)


class LogWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, stream: int, data: bytes) -> None:
        payload = encode(stream, data)
        while payload:
            written = os.write(self.fd, payload)
            payload = payload[written:]


@dataclass
class Entry:
    time: str
    stream: int
    data: bytes  # with its newline when the line was complete


def parse_line(line: bytes) -> Entry | None:
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in STREAM_IDS:
        return None
    content = parts[3] if len(parts) == 4 else b""
    return Entry(parts[0].decode(), STREAM_IDS[parts[1]], content + (b"\n" if parts[2] == b"F" else b""))


def read_entries(data: bytes) -> Iterator[Entry]:
    """Entries from complete log lines; an unterminated last line is left for the next read."""
    for line in data.split(b"\n")[:-1]:
        entry = parse_line(line)
        if entry is not None:
            yield entry
