"""The per-VM monitor: runs QEMU as its child and outlives the daemon, like a container's monitor.

    python -m isobox.runtimes.vm.vmstart CONFIG.json STATUS_FD   (which calls main here)

It starts QEMU, connects to its chardev sockets (serial console and the workload's ``io``
port, see ``guestinit.py``), and waits for the guest init's "workload" mark on the console.
Only then does it report ``{"pid": QEMU's pid, ...}`` on the status fd — or an error carrying
the last console lines (and the init's own "error:" line), when QEMU dies, the kernel panics or
the mark does not come in time.  After that it is the container monitor's ``Pump`` (log, attach
clients), extended for the console and the io port, and it writes the guest workload's exit
code to the exit file.

The io port carries the guest relay's frames (``relay.py``): the workload's stdout and stderr
(one stream on a pty with ``run -t``) go to the log and the clients; their stdin, resizes and
signals go to the relay.  Its EXIT report, sent after the guest flushed its disks, ends the VM:
the monitor stops QEMU then rather than wait for the guest to power itself off.

A guest kernel panic ends QEMU at once (``panic=-1``, ``-no-reboot``); the error then names the
panic and carries the console's last lines, whether it came before the workload or during it.

A firmware-booted OS (``firmware``: a disk image, see ``firmware.py``) has no isobox init: the
VM counts as started once QEMU has built the machine (its QMP greeting), the serial console is
the workload's output (the log, attached clients) and input, SIGTERM/SIGINT press the ACPI power
button (QMP ``system_powerdown``), and the exit code is QEMU's (0 when the guest powers off).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from isobox import attach
from isobox.attach import Frame
from isobox.errors import RuntimeFailure
from isobox.logs import LogWriter
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.monitor import ExitStatus, Pump, write_file_atomic
from isobox.runtimes.vm import kernelimage, relay, vmstart
from isobox.runtimes.vm.qemu import SOCKETS

CONSOLE, IO, CONSOLE_LISTEN, CONSOLE_CLIENT = 10, 11, 12, 13
READY_MARK = b"isobox-init: workload"
INIT_ERROR_MARK = b"isobox-init: error: "
PANIC_MARK = b"Kernel panic - not syncing"
ATTACH_TIMEOUT = 60.0
CONSOLE_TAIL = 20
AFTER_PANIC = 3  # console lines kept in the tail after a panic's (the console.log has them all)
POWER_BUTTON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGPWR)  # firmware boots: ACPI powerdown
QMP_TIMEOUT = 10.0
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # Debian's qemu-system-common (QEMU 7.2's C virtiofsd)


@dataclass
class MonitorConfig:
    argv: list[str]
    run_dir: str
    log_path: str
    console_log: str
    exit_path: str
    wait_attach: bool
    boot_timeout: float
    volumes: list[tuple[str, bool]] = field(default_factory=list)  # (host dir, read-only)
    firmware: bool = False  # a firmware-booted OS: no isobox init, the console is the output

    def sock(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.sock")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


class BootFailure(Exception):
    pass


class Console:
    """The serial console: appended to console.log, its tail kept for error messages."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.lines: deque[bytes] = deque(maxlen=CONSOLE_TAIL)
        self.partial = b""
        self.ready = False
        self.panic: str | None = None  # the kernel's panic line, once seen
        self.init_error: str | None = None  # the guest init's "error: " line, once seen
        self.after_panic = 0

    def feed(self, data: bytes) -> None:
        os.write(self.fd, data)
        text = self.partial + data
        *done, self.partial = text.split(b"\n")
        for line in done:
            line = line.rstrip(b"\r")
            if line.startswith(READY_MARK):
                self.ready = True
            if self.init_error is None and line.startswith(INIT_ERROR_MARK):
                self.init_error = line[len(INIT_ERROR_MARK):].decode(errors="replace").strip()
            if self.panic is None and (at := line.find(PANIC_MARK)) >= 0:
                self.panic = line[at:].decode(errors="replace").strip()
                self.after_panic = 0
            elif self.panic is not None:
                # What led to a panic explains it; the stack dump after it rarely does.
                self.after_panic += 1
                if self.after_panic > AFTER_PANIC:
                    continue
            self.lines.append(line)

    def tail(self) -> str:
        lines = [*self.lines, self.partial] if self.partial else list(self.lines)
        return "\n".join(line.decode(errors="replace") for line in lines if line.strip())

    def failure(self, what: str) -> str:
        """``what`` went wrong, with the panic named first when the guest kernel panicked."""
        if self.panic:
            what = f"the guest kernel panicked ({self.panic}); {what}"
        elif self.init_error:
            what = f"the VM's init failed: {self.init_error}; {what}"
        tail = self.tail()
        return f"{what}; last console lines:\n{tail}" if tail else what


def _process_start(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rsplit(b")", 1)[1].split()[19])


def _connect(path: str, qemu: vmstart.Qemu, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            # A QEMU that refuses its command line or a device (a missing firmware file) ends
            # before or after it made its sockets: the same failure either way.
            if qemu.poll() is not None:
                raise BootFailure("QEMU stopped while building the machine") from None
            if time.monotonic() > deadline:
                raise BootFailure("QEMU did not open its sockets in time") from None
            time.sleep(0.005)


def _listen(path: str) -> socket.socket:
    return attach.listen(path)


class VmPump(Pump):
    """Pump plus the console (to console.log) and the workload's relay on the io port."""

    def __init__(self, qemu_pid: int, listener: socket.socket, ports: dict[str, socket.socket],
                 console: Console, log: LogWriter, stdin: bool, firmware: bool = False) -> None:
        outputs = {ports["console"].fileno(): CONSOLE}
        # Firmware boots: the serial console is the workload's output and its input.
        stdin_fd = ports["console"].fileno() if firmware and stdin else None
        self.io = None if firmware else ports[relay.WORKLOAD_PORT]
        if self.io is not None:
            outputs[self.io.fileno()] = IO
        self.io_decoder = relay.GuestDecoder()
        self.exit_code: int | None = None
        super().__init__(qemu_pid, listener, outputs, stdin_fd, None, log)
        self.firmware = firmware
        self.qmp_path = os.path.join(os.path.dirname(listener.getsockname()), "qmp.sock")
        self.ports = ports
        self.console = console
        # `isobox console`: raw bytes both ways between clients and the serial console.
        self.console_listener = _listen(os.path.join(os.path.dirname(listener.getsockname()), "tty.sock"))
        self.sel.register(self.console_listener, selectors.EVENT_READ, ("out", CONSOLE_LISTEN))
        self.console_clients: dict[int, socket.socket] = {}

    def _on_output(self, fd: int, stream: int) -> None:
        if stream == IO:
            self._on_io(fd)
            return
        if stream == CONSOLE_LISTEN:
            with contextlib.suppress(OSError):
                conn, _ = self.console_listener.accept()
                self.console_clients[conn.fileno()] = conn
                self.sel.register(conn, selectors.EVENT_READ, ("out", CONSOLE_CLIENT))
            return
        if stream == CONSOLE_CLIENT:
            client = self.console_clients[fd]
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if data:
                with contextlib.suppress(OSError):
                    self.ports["console"].sendall(data)
            else:
                self.sel.unregister(fd)
                del self.console_clients[fd]
                client.close()
            return
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            self.open_outputs -= 1
            return
        self.console.feed(data)
        for client in list(self.console_clients.values()):
            try:
                client.sendall(data)
            except OSError:
                self.sel.unregister(client)
                del self.console_clients[client.fileno()]
                client.close()
        if self.firmware:
            if self.log is not None:
                self.log.write(1, data)
            self.broadcast(attach.encode(Frame.STDOUT, data))

    def _on_io(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
            frames = list(self.io_decoder.feed(data))
        except (OSError, ValueError):  # ValueError: not the relay's framing; nothing more to trust
            data, frames = b"", []
        if not data:
            self.sel.unregister(fd)
            self.open_outputs -= 1
            return
        for kind, payload in frames:
            if kind in (relay.GuestFrame.STDOUT, relay.GuestFrame.STDERR) and payload:
                if self.log is not None:
                    self.log.write(int(kind), payload)
                self.broadcast(relay.output_frame(kind, payload))
            elif kind == relay.GuestFrame.EXIT and self.exit_code is None:
                self.exit_code = relay.number(payload)
                # The relay flushed the guest's disks before it reported: the VM has done its
                # work, and QEMU's own clean exit (SIGTERM) flushes its caches to the overlay.
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)

    def _on_frame(self, kind: Frame, payload: bytes) -> None:
        if self.io is not None:
            if data := relay.to_guest(kind, payload):
                with contextlib.suppress(OSError):
                    self.io.sendall(data)
            return
        if kind == Frame.STDIN_EOF:
            self.stdin_fd = None  # the console stays open for `isobox console`
            return
        if kind == Frame.SIGNAL:
            with contextlib.suppress(ValueError):
                if int(payload) in POWER_BUTTON_SIGNALS:
                    system_powerdown(self.qmp_path)
            return
        super()._on_frame(kind, payload)

    def guest_exit(self) -> tuple[int | None, str | None]:
        if self.exit_code is not None:
            return self.exit_code, None
        if self.console.init_error:
            return 125, self.console.init_error
        return None, None


def _wait_ready(qemu: vmstart.Qemu, console_sock: socket.socket, console: Console,
                deadline: float) -> None:
    sel = selectors.DefaultSelector()
    sel.register(console_sock, selectors.EVENT_READ)
    pidfd = os.pidfd_open(qemu.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    try:
        while not console.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BootFailure("the VM did not start its workload in time")
            for key, _ in sel.select(remaining):
                if key.fileobj is console_sock:
                    data = console_sock.recv(65536)
                    if data:
                        console.feed(data)
                        continue
                # QEMU ended (or closed the console): drain what is left and fail
                with contextlib.suppress(OSError):
                    console_sock.settimeout(0.2)
                    while data := console_sock.recv(65536):
                        console.feed(data)
                if not console.ready:
                    raise BootFailure("the VM stopped before its workload started")
    finally:
        sel.close()
        os.close(pidfd)


def system_powerdown(qmp_path: str) -> None:
    """Press the ACPI power button; the guest OS decides what to do (a stop kills after its timeout).
    Bounded as a whole (the pump waits meanwhile): QMP takes one client at a time, and a snapshot
    may hold it."""
    import asyncio

    from qemu.qmp import QMPClient

    async def press() -> None:
        qmp = QMPClient("isobox-monitor")
        await qmp.connect(qmp_path)
        try:
            await qmp.execute("system_powerdown")
        finally:
            await qmp.disconnect()

    with contextlib.suppress(Exception):  # qemu.qmp raises its own tree; QEMU may be on its way out
        asyncio.run(asyncio.wait_for(press(), QMP_TIMEOUT))


def _wait_machine(qmp_path: str, qemu: vmstart.Qemu, deadline: float) -> None:
    """Wait for QMP's greeting: QEMU sends it from its main loop, so the machine (firmware,
    disks, devices) has been built.  A raw read, so that the boot deadline bounds it."""
    sock = _connect(qmp_path, qemu, deadline)
    with sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            greeting = sock.recv(4096)
        except TimeoutError:
            raise BootFailure("QEMU did not start the machine in time") from None
        except OSError:
            greeting = b""
    if b'"QMP"' not in greeting:
        raise BootFailure("QEMU stopped while building the machine")


def unmount_under(root: str) -> None:
    """Detach every mount below ``root`` (read-only volume stages), deepest first."""
    sc.detach_mounts_under(root)


def _start_volumes(cfg: MonitorConfig) -> list[subprocess.Popen[bytes]]:
    """One virtiofsd per volume.  C virtiofsd has no read-only mode, so a read-only volume is
    shared through a read-only bind mount of it (the guest mounts it ro as well)."""
    procs = []
    log = os.open(os.path.join(cfg.run_dir, "virtiofsd.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for i, (source, readonly) in enumerate(cfg.volumes):
            shared = source
            if readonly:
                shared = os.path.join(cfg.run_dir, f"vol{i}")
                os.makedirs(shared, exist_ok=True)
                subprocess.run(["mount", "--bind", source, shared], check=True, capture_output=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", shared], check=True, capture_output=True)
            procs.append(subprocess.Popen(
                [VIRTIOFSD, f"--socket-path={cfg.sock(f'fs{i}')}", "-o", f"source={shared}", "-o", "cache=auto"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    finally:
        os.close(log)
    deadline = time.monotonic() + 10
    for i, proc in enumerate(procs):
        while not os.path.exists(cfg.sock(f"fs{i}")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BootFailure(f"virtiofsd for {cfg.volumes[i][0]} did not start")
            time.sleep(0.005)
    return procs


def _stop_volumes(cfg: MonitorConfig, procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.terminate()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.wait(5)
    unmount_under(cfg.run_dir)


def _stop_qemu(qemu: vmstart.Qemu) -> None:
    with contextlib.suppress(OSError):
        qemu.kill()
    with contextlib.suppress(Exception):
        qemu.wait(10)


def run(cfg: MonitorConfig, status_fd: int, qemu: vmstart.Qemu | None = None) -> None:
    """``qemu``: already started (``vmstart.py``, a VM without volumes)."""
    console = Console(cfg.console_log)
    listener = _listen(cfg.sock("attach"))
    virtiofsd: list[subprocess.Popen[bytes]] = []
    if qemu is None:
        try:
            virtiofsd = _start_volumes(cfg)
        except (BootFailure, subprocess.CalledProcessError, OSError) as exc:
            unmount_under(cfg.run_dir)
            os.write(status_fd, json.dumps({"error": f"cannot share the volumes: {exc}"}).encode() + b"\n")
            return
        qemu = vmstart.start_qemu(cfg.argv, cfg.run_dir)
    ports: dict[str, socket.socket] = {}
    try:
        deadline = time.monotonic() + cfg.boot_timeout
        names: tuple[str, ...] = ("console",) if cfg.firmware else ("console", relay.WORKLOAD_PORT)
        for name in names:
            ports[name] = _connect(cfg.sock(name), qemu, time.monotonic() + 10)
        if cfg.firmware:
            _wait_machine(cfg.sock("qmp"), qemu, deadline)
        else:
            _wait_ready(qemu, ports["console"], console, deadline)
    except BootFailure as exc:
        _stop_qemu(qemu)
        _stop_volumes(cfg, virtiofsd)
        _remove_sockets(cfg)
        qemu_err = Path(cfg.run_dir, "qemu.log").read_text(errors="replace").strip()
        message = console.failure(str(exc))
        if qemu_err:
            message += ("\n" if "\n" in message else "; QEMU said:\n") + qemu_err
        os.write(status_fd, json.dumps({"error": message}).encode() + b"\n")
        return
    if not cfg.firmware:
        # The guest runs: QEMU needs its mapped kernel and initramfs again only on a reset.
        with contextlib.suppress(OSError):
            kernelimage.release(qemu.pid, _boot_files(cfg.argv))
    me = os.getpid()
    os.write(status_fd, json.dumps({"pid": qemu.pid, "start": _process_start(qemu.pid), "monitor": me,
                                    "monitor_start": _process_start(me)}).encode() + b"\n")
    log_fd = os.open(cfg.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    pump = VmPump(qemu.pid, listener, ports, console, LogWriter(log_fd), stdin=True, firmware=cfg.firmware)
    if cfg.wait_attach:
        pump.wait_first_client(ATTACH_TIMEOUT)
    status = pump.run()
    assert status is not None  # no handover_after: run() returns once QEMU has exited
    _stop_volumes(cfg, virtiofsd)
    code, error = pump.guest_exit()
    if code is None:
        if os.WIFSIGNALED(status):
            code = 128 + os.WTERMSIG(status)
        elif cfg.firmware:  # QEMU's own status: 0 when the guest powered off
            code = os.WEXITSTATUS(status)
            if code:
                error = "QEMU failed: " + Path(cfg.run_dir, "qemu.log").read_text(errors="replace").strip()[-500:]
        else:
            code = 255
            error = console.failure("the VM stopped without reporting the workload's exit")
    result = ExitStatus(code, False, error, time.time())
    write_file_atomic(cfg.exit_path, json.dumps(result.to_json()).encode(), durable=False)
    pump.finish(result)
    os.close(status_fd)
    _remove_sockets(cfg)


def _boot_files(argv: list[str]) -> list[str]:
    """The files QEMU loads for a direct kernel boot (``-kernel``, ``-initrd``)."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-kernel", "-initrd")]


def _remove_sockets(cfg: MonitorConfig) -> None:
    exec_ports = Path(cfg.run_dir).glob(f"{relay.EXEC_PORT_PREFIX}*.sock")  # a crashed exec -t's
    names = [*SOCKETS, *(p.stem for p in exec_ports)]
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(cfg.sock(name))


def read_line(fd: int, timeout: float) -> bytes:
    """The monitor's status line, as the daemon reads it (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise RuntimeFailure(f"the VM did not start within {timeout:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def main(qemu: vmstart.Qemu | None = None) -> None:
    cfg = MonitorConfig(**json.loads(Path(sys.argv[1]).read_text()))
    status_fd = int(sys.argv[2])
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the monitor ends when QEMU ends, not before
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    try:
        run(cfg, status_fd, qemu)
    except BaseException as exc:  # noqa: BLE001 - reported through the status pipe
        with contextlib.suppress(OSError):
            os.write(status_fd, json.dumps({"error": f"VM monitor: {type(exc).__name__}: {exc}"}).encode() + b"\n")
        raise


if __name__ == "__main__":
    main()
