"""``isobox exec -t`` in a microVM: one process per session, like a container exec's monitor.

    python -m isobox.runtimes.vm.ptyexec RUN_DIR REQUEST.json STATUS_FD

qemu-ga runs commands without a terminal and hands their output back only when they end, so a
terminal session takes another road, through the guest's pty relay (``relay.py``):

1. hot-plug a virtio-serial port of its own over QMP (a chardev socket in the run dir and a
   ``virtserialport`` named after it: ports present at boot would cost every boot) and connect;
2. once the client is there, have qemu-ga start ``isobox-run --pty PORT ...`` (``guestrun.c``),
   which finds the port by name, allocates the pty in the image's devpts, starts the command on
   it and relays;
3. wait for the relay's READY (with the pid qemu-ga reported);
4. proxy: the client's frames go to the relay as ``relay.to_guest`` makes them, the relay's
   output comes back as STDOUT and its EXIT becomes the client's.  The port closing means the
   VM stopped; the client leaving hangs the session up (the relay sees the port's EOF);
5. read the relay's end from qemu-ga (which keeps it until asked) and unplug the port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import selectors
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from isobox import attach
from isobox.attach import Frame
from isobox.errors import Conflict, RuntimeFailure
from isobox.runtimes.vm import agent, relay
from isobox.runtimes.vm.qemu import SERIAL_BUS
from isobox.runtimes.vm.relay import GuestFrame

QMP_TIMEOUT = 6.0  # plugging; the daemon waits 10 s for our status (a snapshot may hold QMP)
UNPLUG_TIMEOUT = 3.0
READY_TIMEOUT = 30.0  # qemu-ga starting the relay, the relay finding its port (TCG is slow)
STATUS_EVERY = 1.0  # while waiting for READY: has the relay failed? (its stderr says why)
REAP_TIMEOUT = 5.0
TO_PORT_HIGH_WATER = 1 << 18  # stop reading the client while this much waits for the guest
# The command died with the VM, as a container exec's process dies of SIGKILL with its container.
VM_STOPPED_RESULT = {"exit_code": 137, "oom_killed": False, "error": "the VM stopped during the exec session"}


class SessionError(RuntimeFailure):
    pass


def _with_qmp(run_dir: Path, work: Callable[[Any], Awaitable[None]], timeout: float = QMP_TIMEOUT) -> None:
    """``work(client)`` on a QMP connection, bounded as a whole.  QMP serves one client at a
    time and a queued connection can fail outright (EINVAL), so connecting is retried."""
    from qemu.qmp import ConnectError, QMPClient

    path = run_dir / "qmp.sock"

    async def run() -> None:
        while True:
            qmp = QMPClient("isobox-exec")
            try:
                await qmp.connect(str(path))
                break
            except ConnectError:
                if not path.exists():
                    raise
                await asyncio.sleep(0.05)
        try:
            await work(qmp)
        finally:
            await qmp.disconnect()

    asyncio.run(asyncio.wait_for(run(), timeout))


def plug_port(run_dir: Path, port: str) -> Path:
    """A virtio-serial port named ``port``, its host end a chardev socket; returns the socket.
    On failure the caller unplugs what was made."""
    path = run_dir / f"{port}.sock"
    chardev = {"id": port, "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": str(path)}}, "server": True, "wait": False}}}
    device = {"driver": "virtserialport", "id": port, "chardev": port, "name": port, "bus": SERIAL_BUS}

    async def plug(qmp: Any) -> None:
        await qmp.execute("chardev-add", chardev)
        await qmp.execute("device_add", device)

    try:
        _with_qmp(run_dir, plug)
    except TimeoutError:
        raise Conflict("QEMU's monitor is busy (a snapshot?): try exec -t again") from None
    except Exception as exc:  # noqa: BLE001 - qemu.qmp raises its own tree
        if not (run_dir / "qmp.sock").exists():
            raise Conflict("the VM is not running") from exc
        if SERIAL_BUS in str(exc):  # "Bus 'vser.0' not found": started by an isobox without exec -t
            raise Conflict("this VM was started without a terminal port bus for exec -t",
                           hint="restart it (isobox restart NAME), or exec without -t") from exc
        if "port id" in str(exc):  # virtio-serial-bus: "Out-of-range port id specified, max. allowed: N"
            raise Conflict("too many exec -t sessions in this VM at once",
                           hint="end one of them, or exec without -t") from exc
        raise Conflict(f"cannot add a terminal port to the VM: {exc}") from exc
    return path


def unplug_port(run_dir: Path, port: str) -> None:
    """Best effort: a half-made port is undone as far as it got; a VM that is gone took it along."""
    from qemu.qmp import ExecuteError

    async def unplug(qmp: Any) -> None:
        with contextlib.suppress(ExecuteError):  # never added
            await qmp.execute("device_del", {"id": port})
        for _ in range(40):  # the device lets go of its chardev a moment after device_del
            try:
                await qmp.execute("chardev-remove", {"id": port})
                return
            except ExecuteError as exc:
                if "busy" not in str(exc):
                    return  # never added
                await asyncio.sleep(0.05)

    with contextlib.suppress(Exception):
        _with_qmp(run_dir, unplug, UNPLUG_TIMEOUT)
    with contextlib.suppress(OSError):
        (run_dir / f"{port}.sock").unlink()


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise Conflict("the VM is not running") from exc
    return sock


def start_relay(run_dir: Path, argv: list[str], port: str) -> int:
    """qemu-ga starts ``isobox-run --pty PORT ...``; its pid.  Its stdio are captured: only its
    own errors go there (the command's terminal is the pty)."""
    relay = [argv[0], "--pty", port, *argv[1:]]
    with agent.connected(run_dir) as ga:
        return int(ga.call("guest-exec", path=relay[0], arg=relay[1:], **{"capture-output": True})["pid"])


def relay_status(run_dir: Path, pid: int) -> dict[str, Any]:
    with agent.connected(run_dir) as ga:
        status: dict[str, Any] = ga.call("guest-exec-status", pid=pid)
        return status


def _relay_failure(status: dict[str, Any]) -> str:
    err = base64.b64decode(status.get("err-data", "")).decode(errors="replace").strip()
    return f"the guest's pty relay failed (exit {status.get('exitcode')})" + (f": {err}" if err else "")


class Session:
    def __init__(self, run_dir: Path, port_path: Path, client: socket.socket) -> None:
        self.run_dir = run_dir
        self.client = client
        self.sock = _connect(port_path)
        self.decoder = relay.GuestDecoder()
        self.early: list[tuple[GuestFrame, bytes]] = []  # what came with READY

    def await_ready(self, pid: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionError("the guest's pty relay did not start in time")
            self.sock.settimeout(min(remaining, STATUS_EVERY))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                status = relay_status(self.run_dir, pid)
                if status.get("exited"):
                    raise SessionError(_relay_failure(status)) from None
                continue
            if not data:
                raise SessionError("the VM stopped")
            frames = list(self.decoder.feed(data))
            if frames and frames[0][0] == GuestFrame.READY:
                if relay.number(frames[0][1]) != pid:  # the port is this session's alone
                    raise SessionError(f"a stranger on the session's port: {frames[0][1]!r}")
                self.early = frames[1:]
                self.sock.settimeout(None)
                return
            if frames:
                raise SessionError(f"the guest's pty relay spoke before READY: {frames[0][0].name}")

    def proxy(self) -> dict[str, Any] | None:
        """Until the relay's EXIT (its result) or the client leaves (None)."""
        for kind, payload in self.early:
            if (result := self._from_guest(kind, payload)) is not None:
                return result
        client_decoder = attach.Decoder()
        to_port = bytearray()  # non-blocking towards the guest: it may be busy sending us output
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        reading_client = False
        try:
            while True:
                sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if to_port else 0))
                if reading_client != (len(to_port) < TO_PORT_HIGH_WATER):
                    reading_client = not reading_client
                    if reading_client:
                        sel.register(self.client, selectors.EVENT_READ)
                    else:
                        sel.unregister(self.client)
                for key, events in sel.select():
                    if key.fileobj is self.client:
                        data = self._recv(self.client)
                        if not data:
                            return None
                        try:
                            frames = list(client_decoder.feed(data))
                        except ValueError:
                            return None
                        for frame, payload in frames:
                            to_port += relay.to_guest(frame, payload)
                        continue
                    if events & selectors.EVENT_WRITE and to_port:
                        try:
                            del to_port[: self.sock.send(to_port)]
                        except BlockingIOError:
                            pass
                        except OSError:
                            return VM_STOPPED_RESULT
                    if events & selectors.EVENT_READ:
                        data = self._recv(self.sock)
                        if data == b"":
                            return VM_STOPPED_RESULT
                        for kind, payload in self.decoder.feed(data or b""):
                            if (result := self._from_guest(kind, payload)) is not None:
                                return result
        finally:
            sel.close()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes | None:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _from_guest(self, kind: GuestFrame, payload: bytes) -> dict[str, Any] | None:
        if kind in (GuestFrame.STDOUT, GuestFrame.STDERR) and payload:
            self.client.sendall(relay.output_frame(kind, payload))
        elif kind == GuestFrame.EXIT:
            code = relay.number(payload)
            return {"exit_code": 255 if code is None else code, "oom_killed": False, "error": None}
        return None

    def close(self) -> None:
        self.sock.close()


def reap(run_dir: Path, pid: int) -> None:
    """qemu-ga keeps a finished command's record (and output) until its status is read."""
    deadline = time.monotonic() + REAP_TIMEOUT
    with contextlib.suppress(Exception):  # best effort: the VM may be gone
        while not relay_status(run_dir, pid).get("exited") and time.monotonic() < deadline:
            time.sleep(0.1)


def main(run_dir: Path, req_path: Path, status_fd: int) -> None:
    req = agent.read_request(req_path)
    port = relay.EXEC_PORT_PREFIX + secrets.token_hex(4)
    try:
        port_path = plug_port(run_dir, port)
    except Conflict as exc:
        unplug_port(run_dir, port)  # first: the daemon kills us once it has the error
        os.write(status_fd, json.dumps({"error": exc.message}).encode() + b"\n")
        return
    try:
        client = agent.accept_client(req["sock"], status_fd)
    except BaseException:
        unplug_port(run_dir, port)
        raise
    pid = None
    result: dict[str, Any] | None
    try:
        session = Session(run_dir, port_path, client)
        try:
            pid = start_relay(run_dir, req["argv"], port)
            session.await_ready(pid)
            result = session.proxy()
        finally:
            session.close()  # a relay still there sees the port's EOF and hangs up
    except Exception as exc:  # noqa: BLE001 - reported to the client
        message = getattr(exc, "message", str(exc))
        with contextlib.suppress(OSError):
            client.sendall(attach.encode(Frame.STDERR, f"isobox: {message}\n".encode()))
        result = {"exit_code": 126, "oom_killed": False, "error": message}
    if result is not None:
        with contextlib.suppress(OSError):
            client.sendall(attach.encode_json(Frame.EXIT, result))
            client.shutdown(socket.SHUT_WR)
    client.close()
    if pid is not None:
        reap(run_dir, pid)
    unplug_port(run_dir, port)
    os.close(status_fd)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
