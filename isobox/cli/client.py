"""The CLI's API client: HTTP/1.1 over the daemon's unix socket, and the daemon's auto-start.

Deliberately not ``http.client``: importing it pulls in ``email`` and ``ssl`` (about 30 ms
here, more than the interpreter's own start-up), and every ``isobox run`` pays for the
imports.  The daemon is our own uvicorn, so a small client that speaks exactly what it sends
(Content-Length or chunked bodies, keep-alive) is enough; ``tests/unit/test_client.py``
checks it against the stdlib's ``http.server``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from isobox import __version__, paths
from isobox.attach import Decoder, Frame
from isobox.errors import ERRORS_BY_KIND, IsoboxError

START_TIMEOUT = 15.0
CHUNK = 65536

_CLASS_BY_STATUS = {400: "InvalidArgument", 404: "NotFound", 409: "Conflict"}


class DaemonUnreachable(IsoboxError):
    """No daemon answers on the socket (and auto-start was off or failed)."""


class ProtocolError(IsoboxError):
    pass


def path_for(*parts: str, query: dict[str, Any] | None = None) -> str:
    """``path_for("containers", ref, "stop", query={"t": 5})`` with every part escaped."""
    target = "/" + "/".join(quote(p, safe="") for p in parts)
    if query:
        items = {k: _query_value(v) for k, v in query.items() if v is not None}
        if items:
            target += "?" + urlencode(items)
    return target


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- HTTP/1.1 over a unix socket -----------------------------------------------------------------


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str], conn: Connection) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn = conn
        self._reader: io.BufferedReader = conn.reader
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._chunked = chunked
        self._remaining: int | None = None  # bytes left in the body (or in the current chunk)
        self._done = False
        if not chunked:
            length = headers.get("content-length")
            if status in (204, 304) or 100 <= status < 200:
                self._remaining = 0
            elif length is not None:
                self._remaining = int(length)
            # else: until the server closes the connection
        if self._remaining == 0:
            self._finish()

    def iter_chunks(self) -> Iterator[bytes]:
        """The body as it arrives (a chunk per server write when the server chunks)."""
        while not self._done:
            data = self._read_some()
            if data:
                yield data

    def read(self) -> bytes:
        return b"".join(self.iter_chunks())

    def json(self) -> Any:
        body = self.read()
        return json.loads(body) if body.strip() else None

    def _read_some(self) -> bytes:
        if self._chunked:
            return self._read_chunked()
        want = CHUNK if self._remaining is None else min(CHUNK, self._remaining)
        data = self._reader.read1(want)
        if not data:
            if self._remaining:
                raise ProtocolError("the isobox daemon closed the connection in the middle of an answer")
            self._finish(close=True)
            return b""
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish()
        return bytes(data)

    def _read_chunked(self) -> bytes:
        if not self._remaining:
            line = self._reader.readline(1024)
            if not line.endswith(b"\n"):
                raise ProtocolError("the isobox daemon closed the connection in the middle of an answer")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk header from the daemon: {line[:40]!r}") from None
            if size == 0:
                while self._reader.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._finish()
                return b""
            self._remaining = size
        data = self._reader.read1(min(CHUNK, self._remaining))
        if not data:
            raise ProtocolError("the isobox daemon closed the connection in the middle of an answer")
        self._remaining -= len(data)
        if self._remaining == 0:
            self._reader.readline(3)  # the CRLF after the chunk
        return bytes(data)

    def _finish(self, close: bool = False) -> None:
        self._done = True
        keep = not close and self.headers.get("connection", "").lower() != "close"
        self._conn.response_done(keep_alive=keep)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()


class Connection:
    """One keep-alive connection to the daemon; reconnects when the server closed it."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.reader: io.BufferedReader = None  # type: ignore[assignment]
        self._busy = False

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = None
        self._busy = False

    def response_done(self, keep_alive: bool) -> None:
        self._busy = False
        if not keep_alive:
            self.close()

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        if self._busy:  # the previous answer was not read to its end
            self.close()
        head = [f"{method} {target} HTTP/1.1", "Host: isobox", f"User-Agent: isobox-cli/{__version__}"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        reused = self.sock is not None
        for attempt in (1, 2):
            if self.sock is None:
                self.connect()
            assert self.sock is not None
            try:
                self.sock.sendall(payload)
                status_line = self.reader.readline(65537)
                if not status_line:
                    raise ConnectionResetError("closed before an answer")
            except (BrokenPipeError, ConnectionResetError):
                self.close()
                if reused and attempt == 1:
                    continue  # an idle keep-alive connection the server had closed: retry once
                raise
            break
        self._busy = True
        return self._read_head(status_line)

    def _read_head(self, status_line: bytes) -> Response:
        parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self.close()
            raise ProtocolError(f"not an HTTP answer from the daemon: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        while True:
            line = self.reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
            headers["connection"] = "close"
        return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, self)


# -- the API client ------------------------------------------------------------------------------


class Client:
    """``call()`` for JSON answers, ``frames()`` for streamed ones; errors raise ``IsoboxError``."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, *, autostart: bool = True,
                 daemon_cmd: list[str] | None = None, start_timeout: float = START_TIMEOUT) -> None:
        self.socket_path = str(socket_path or paths.socket_path())
        self.autostart = autostart
        self.daemon_cmd = daemon_cmd
        self.start_timeout = start_timeout
        self._conn = Connection(self.socket_path)
        self._started = False

    def close(self) -> None:
        self._conn.close()

    def call(self, method: str, target: str, body: Any = None) -> Any:
        resp = self.send(method, target, body)
        return resp.json()

    def frames(self, method: str, target: str, body: Any = None) -> Iterator[tuple[Frame, bytes]]:
        resp = self.send(method, target, body)
        decoder = Decoder()
        try:
            for data in resp.iter_chunks():
                yield from decoder.feed(data)
        except ValueError as exc:
            raise ProtocolError(f"bad stream from the daemon: {exc}") from None
        finally:
            resp.close()

    def send(self, method: str, target: str, body: Any = None) -> Response:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            resp = self._request(method, target, data, headers)
        except ConnectionError as exc:
            raise DaemonUnreachable(f"lost the connection to the isobox daemon ({exc})") from None
        except TimeoutError:
            raise DaemonUnreachable("the isobox daemon did not answer in time") from None
        if resp.status >= 400:
            raise error_from_response(resp.status, resp.read())
        return resp

    def _request(self, method: str, target: str, data: bytes | None, headers: dict[str, str]) -> Response:
        try:
            return self._conn.request(method, target, data, headers)
        except (FileNotFoundError, ConnectionRefusedError):
            if not self.autostart or self._started:
                raise DaemonUnreachable(
                    f"cannot connect to the isobox daemon at {self.socket_path}",
                    hint="is isoboxd running? start it with: isoboxd",
                ) from None
        except PermissionError:
            raise DaemonUnreachable(
                f"permission denied connecting to the isobox daemon at {self.socket_path}",
                hint="the API socket is root-only: run isobox as root",
            ) from None
        start_daemon(self.socket_path, self.daemon_cmd, self.start_timeout)
        self._started = True
        return self._conn.request(method, target, data, headers)

    def ping(self) -> bool:
        return ping(self.socket_path)


def error_from_response(status: int, body: bytes) -> IsoboxError:
    try:
        doc = json.loads(body)
        message, hint, kind = doc["message"], doc.get("hint"), doc.get("kind")
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace").strip().splitlines()
        return IsoboxError(f"the isobox daemon answered {status}: {text[0][:200] if text else '(no body)'}")
    cls = ERRORS_BY_KIND.get(str(kind)) or ERRORS_BY_KIND.get(_CLASS_BY_STATUS.get(status, ""), IsoboxError)
    return cls(str(message), hint=str(hint) if hint else None)


# -- auto-start ----------------------------------------------------------------------------------


def ping(socket_path: str, timeout: float = 2.0) -> bool:
    conn = Connection(socket_path, timeout=timeout)
    try:
        resp = conn.request("GET", "/_ping")
        return resp.status == 200 and resp.read().strip() == b"OK"
    except (OSError, ProtocolError):
        return False
    finally:
        conn.close()


def daemon_log() -> Path:
    return paths.state_root() / "isoboxd.log"


def start_daemon(socket_path: str, cmd: list[str] | None = None, timeout: float = START_TIMEOUT) -> None:
    """Start isoboxd detached (its own session, output appended to the log) and wait for it."""
    import subprocess

    from isobox.daemon import EXIT_ALREADY_RUNNING

    log_path = daemon_log()
    try:
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    except OSError as exc:
        hint = "isobox needs root: run it as root" if isinstance(exc, PermissionError) else None
        raise DaemonUnreachable(f"cannot start the isobox daemon: {log_path}: {exc.strerror}", hint=hint) from None
    argv = cmd or [sys.executable, "-m", "isobox.daemon.server", "--socket", socket_path]
    with log:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise DaemonUnreachable(f"cannot start the isobox daemon: {exc}") from None
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if ping(socket_path):
            return
        code = proc.poll()
        if code is not None and code != EXIT_ALREADY_RUNNING:
            raise DaemonUnreachable(f"the isobox daemon failed to start (exit status {code})",
                                    hint=last_line(log_path) or f"see {log_path}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise DaemonUnreachable(f"the isobox daemon did not answer within {timeout:.0f} s",
                            hint=last_line(log_path) or f"see {log_path}")


def last_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None
