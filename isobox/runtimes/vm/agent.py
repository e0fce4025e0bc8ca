"""Talking to qemu-ga (the QEMU guest agent) over its virtio-serial port: exec, files, shutdown.

The guest runs Debian's qemu-ga (its libraries copied into the initramfs, see ``guest.py``), so
the same protocol serves isobox microVMs and full-OS guests.  The host side is this small sync
client: newline-delimited JSON, ``guest-sync-delimited`` first (a 0xFF byte resets the agent's
parser and marks the start of its answer), then ``guest-exec`` + ``guest-exec-status`` polling,
``guest-file-open/read/write/close`` and ``guest-shutdown``.

A chardev socket takes one client at a time, so every use holds an flock on ``qga.lock``.

``isobox exec`` runs as a small process (``python -m isobox.runtimes.vm.agent``) that speaks the
attach protocol to the client, like a container exec's monitor: STDOUT/STDERR frames, then EXIT.
qemu-ga buffers a command's output until it ends, so output arrives when the command exits.
``exec -t`` needs a terminal and a live stream, which qemu-ga cannot give: ``ptyexec.py``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from isobox import attach
from isobox.attach import Frame
from isobox.errors import Conflict, RuntimeFailure
from isobox.runtimes.base import Launched
from isobox.runtimes.vm.monitor import read_line

SYNC_TIMEOUT = 10.0
CHUNK = 48 * 1024  # guest-file-read/write payloads (base64 inside a JSON line)


class AgentError(RuntimeFailure):
    """The guest agent answered with an error, or not at all."""


class GuestAgent:
    def __init__(self, path: Path, timeout: float = SYNC_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise Conflict("the VM's guest agent is not reachable (is the VM running?)") from exc
        self.buf = b""
        self._sync()

    def close(self) -> None:
        self.sock.close()

    def _readline(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise AgentError("the guest agent closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def _sync(self) -> None:
        token = int.from_bytes(secrets.token_bytes(4), "big") & 0x7FFFFFFF
        self.sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                                 "arguments": {"id": token}}).encode() + b"\n")
        deadline = time.monotonic() + SYNC_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self._readline()
            except TimeoutError:
                break
            line = line[line.rfind(b"\xff") + 1:]
            with contextlib.suppress(ValueError):
                if json.loads(line).get("return") == token:
                    return
        raise AgentError("the guest agent did not answer (it starts with the workload)")

    def call(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        reply = json.loads(self._readline())
        if "error" in reply:
            raise AgentError(f"guest agent: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    # -- files ------------------------------------------------------------------------------------

    def read_file(self, path: str) -> Iterator[bytes]:
        handle = self.call("guest-file-open", path=path, mode="r")
        try:
            while True:
                got = self.call("guest-file-read", handle=handle, count=CHUNK)
                if got.get("count"):
                    yield base64.b64decode(got["buf-b64"])
                if got.get("eof") or not got.get("count"):
                    return
        finally:
            self.call("guest-file-close", handle=handle)

    def write_file(self, path: str, chunks: Iterator[bytes]) -> None:
        handle = self.call("guest-file-open", path=path, mode="w")
        try:
            for chunk in chunks:
                self.call("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(chunk).decode()})
        finally:
            self.call("guest-file-close", handle=handle)


@contextlib.contextmanager
def connected(run_dir: Path) -> Iterator[GuestAgent]:
    with open(run_dir / "qga.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        agent = GuestAgent(run_dir / "qga.sock")
        try:
            yield agent
        finally:
            agent.close()


def guest_exec(agent: GuestAgent, argv: list[str], stdin: bytes | None) -> tuple[int, bytes, bytes]:
    args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if stdin:
        args["input-data"] = base64.b64encode(stdin).decode()
    pid = agent.call("guest-exec", **args)["pid"]
    delay = 0.01
    while True:
        status = agent.call("guest-exec-status", pid=pid)
        if status.get("exited"):
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    out = base64.b64decode(status.get("out-data", ""))
    err = base64.b64decode(status.get("err-data", ""))
    code = status.get("exitcode")
    if code is None:
        code = 128 + int(status.get("signal") or 9)
    return int(code), out, err


# -- the exec process -----------------------------------------------------------------------------


def start_exec(run_dir: Path, argv: list[str], interactive: bool, tty: bool = False) -> tuple[Launched, str]:
    """Start the exec process (``ptyexec`` for a terminal session); returns once it listens on
    the socket the client attaches to."""
    if not (run_dir / "qga.sock").exists():
        raise Conflict("the VM is not running")
    sock_path = run_dir / f"exec-{secrets.token_hex(6)}.sock"
    req = run_dir / f"{sock_path.stem}.json"
    req.write_text(json.dumps({"argv": argv, "interactive": interactive, "sock": str(sock_path)}))
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    os.set_inheritable(status_w, True)
    module = "isobox.runtimes.vm.ptyexec" if tty else "isobox.runtimes.vm.agent"
    proc = subprocess.Popen([sys.executable, "-m", module, str(run_dir), str(req), str(status_w)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=(status_w,), start_new_session=True)
    os.close(status_w)
    try:
        line = read_line(status_r, 10)
        status = json.loads(line) if line else {"error": "the exec process died"}
        if "error" in status:
            raise RuntimeFailure(str(status["error"]))
    except BaseException:
        os.close(status_r)
        with contextlib.suppress(OSError):
            proc.kill()
        raise
    proc.returncode = 0  # reaped by the engine
    return Launched(proc.pid, 0, proc.pid, 0, status_r), str(sock_path)


def read_request(req_path: Path) -> dict[str, Any]:
    req: dict[str, Any] = json.loads(req_path.read_text())
    req_path.unlink()
    return req


def accept_client(sock_path: str, status_fd: int, timeout: float = 60.0) -> socket.socket:
    """Listen at ``sock_path`` (root-only), report our pid on the status fd, take one client."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(sock_path)
    finally:
        os.umask(old)
    listener.listen(1)
    me = os.getpid()
    os.write(status_fd, json.dumps({"pid": me, "monitor": me}).encode() + b"\n")
    listener.settimeout(timeout)
    try:
        client, _ = listener.accept()
    finally:
        listener.close()
        os.unlink(sock_path)
    client.settimeout(None)
    return client


def _exec_main(run_dir: Path, req_path: Path, status_fd: int) -> None:
    req = read_request(req_path)
    client = accept_client(req["sock"], status_fd)
    stdin = b""
    if req["interactive"]:
        decoder = attach.Decoder()
        done = False
        while not done:
            data = client.recv(65536)
            if not data:
                break
            for kind, payload in decoder.feed(data):
                if kind == Frame.STDIN:
                    stdin += payload
                elif kind == Frame.STDIN_EOF:
                    done = True
    try:
        with connected(run_dir) as agent:
            code, out, err = guest_exec(agent, req["argv"], stdin)
        result: dict[str, Any] = {"exit_code": code, "oom_killed": False, "error": None}
        if out:
            client.sendall(attach.encode(Frame.STDOUT, out))
        if err:
            client.sendall(attach.encode(Frame.STDERR, err))
    except Exception as exc:  # noqa: BLE001 - reported to the client
        message = getattr(exc, "message", str(exc))
        client.sendall(attach.encode(Frame.STDERR, f"isobox: {message}\n".encode()))
        result = {"exit_code": 126, "oom_killed": False, "error": message}
    client.sendall(attach.encode_json(Frame.EXIT, result))
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)
    client.close()
    os.close(status_fd)


if __name__ == "__main__":
    _exec_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
