"""Terminals in microVMs (run -t, run -it, exec -t, exec -it) and a real guest kernel panic.

Few boots (each is seconds under TCG), many checks per boot.  The interactive tests run the CLI
on a pty of their own, as a user's terminal: sized, resized, typed into, with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from tests.conftest import VENV_BIN, Isobox, require
from tests.integration.helpers import assert_vm_gone, processes_under

pytestmark = pytest.mark.root
require("qemu-system-x86_64", "qemu-img")

BOOT = 300  # seconds a CLI call that boots a VM may take under TCG
CURSOR_QUERY = b"\x1b[6n"  # busybox ash's line editor asks the terminal where the cursor is


class Terminal:
    """``isobox ARGS`` on a pty we hold the master of."""

    def __init__(self, box: Isobox, *args: str, rows: int = 40, cols: int = 100) -> None:
        self.master, slave = pty.openpty()
        self.resize(rows, cols)
        self.proc = subprocess.Popen([str(VENV_BIN / "isobox"), *args], env=box.env, stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True)
        os.close(slave)
        self.buf = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def window_changed(self, rows: int, cols: int) -> None:
        self.resize(rows, cols)
        os.kill(self.proc.pid, signal.SIGWINCH)  # the CLI is no session's foreground: tell it

    def expect(self, text: str, timeout: float = 60) -> str:
        """Everything up to and including ``text``."""
        want = text.encode()
        deadline = time.monotonic() + timeout
        while want not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.master], [], [], remaining)[0]:
                raise AssertionError(f"no {text!r} within {timeout} s; the terminal shows {self.buf[-600:]!r}")
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the CLI has gone
                raise AssertionError(f"the CLI ended before {text!r}; it showed {self.buf[-600:]!r}") from None
            if CURSOR_QUERY in data:
                os.write(self.master, b"\x1b[1;5R")  # as a terminal answers: before anything we type
            self.buf += data
        cut = self.buf.index(want) + len(want)
        seen, self.buf = self.buf[:cut], self.buf[cut:]
        return seen.decode(errors="replace")

    def prompt(self, timeout: float = 60) -> None:
        self.expect("# " + CURSOR_QUERY.decode(), timeout)
        time.sleep(0.2)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def exit_code(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _workloads(box: Isobox) -> set[str]:
    return {c["Id"] for c in json.loads(box.cli("ps", "-a", "--format", "json", check=True).stdout)}


def _leftovers(box: Isobox) -> tuple[set[str], set[str], set[str]]:
    """Run dirs, data dirs and rows of VMs."""
    run = {p.name for p in (box.run_root / "v").iterdir()} if (box.run_root / "v").is_dir() else set()
    data = {p.name for p in (box.root / "containers").iterdir()} if (box.root / "containers").is_dir() else set()
    return run, data, _workloads(box)


def _guest_processes(box: Isobox, ref: str) -> str:
    return box.cli("exec", ref, "ps", "-o", "pid,args", check=True).stdout


def test_vm_run_it_is_a_real_terminal(isobox: Isobox) -> None:
    """run -it: a pty in the guest, its size following ours, Ctrl-C to the foreground job, the
    shell's exit code; --rm leaves nothing."""
    before = _leftovers(isobox)
    term = Terminal(isobox, "run", "--rm", "-it", "--isolation", "vm", "--network", "none", "busybox", "sh")
    try:
        term.prompt(BOOT)
        term.type("tty; test -t 0 && test -t 1 && echo both-ttys; echo TERM=$TERM; stty size\r")
        out = term.expect("40 100\r\n")
        assert "/dev/pts/0\r\n" in out and "both-ttys\r\n" in out and "TERM=xterm\r\n" in out
        term.prompt()
        term.window_changed(50, 120)
        time.sleep(0.5)
        term.type("stty size\r")
        term.expect("50 120\r\n")
        term.prompt()
        term.type("sh -c 'echo ar''med; sleep 300'\r")  # quoted apart: the echo of the line is not the mark
        term.expect("armed\r\n")
        time.sleep(0.3)
        term.type("\x03")  # Ctrl-C, as a raw terminal sends it: the guest's line discipline signals
        term.prompt()
        term.type("echo rc=$?\r")
        term.expect("rc=130")
        term.prompt()
        term.type("exit 3\r")
        assert term.exit_code() == 3
    finally:
        term.close()
    assert _leftovers(isobox) == before, "the VM left something behind"


def test_vm_run_t_with_exec_t_and_exec_it_beside_it(isobox: Isobox) -> None:
    """run -t (no -i, no terminal on our side) plus exec -t / exec -it / plain exec into it; stop's
    SIGTERM reaches the workload through the relay."""
    script = ('tty; test -t 0 && test -t 1 && echo in-tty; trap "echo got-term; exit 4" TERM; '
              'while :; do sleep 0.2; done')
    run = subprocess.Popen([str(VENV_BIN / "isobox"), "run", "-t", "--name", "vmtty", "--isolation", "vm",
                            "--network", "none", "busybox", "sh", "-c", script],
                           env=isobox.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cid = ""
    try:
        assert run.stdout is not None
        first = run.stdout.readline()  # blocks until the VM runs the workload
        assert first == b"/dev/pts/0\r\n", (first, run.poll())
        assert run.stdout.readline() == b"in-tty\r\n"
        cid = json.loads(isobox.cli("inspect", "vmtty", check=True).stdout)[0]["Id"]

        res = isobox.cli("exec", "-t", "vmtty", "sh", "-c",
                         "tty; test -t 0 && test -t 1 && echo exec-tty; echo $TERM; exit 6")
        assert res.returncode == 6, res.stderr
        assert res.stdout == "/dev/pts/1\nexec-tty\nxterm\n"  # text mode: the pty's \r\n read as \n

        # The user's own terminal: owned by the user it runs as, as login(1) would leave it.
        res = isobox.cli("exec", "-t", "-u", "1000:1000", "vmtty", "sh", "-c", 'id -u; stat -c %u "$(tty)"')
        assert res.stdout.split() == ["1000", "1000"], res

        res = isobox.cli("exec", "vmtty", "sh", "-c", "echo out; echo err >&2; exit 2")  # qemu-ga, as before
        assert (res.returncode, res.stdout, res.stderr) == (2, "out\n", "err\n")

        term = Terminal(isobox, "exec", "-it", "vmtty", "sh", rows=30, cols=90)
        try:
            term.prompt()
            term.type("stty size; echo $HOSTNAME\r")
            term.expect(f"30 90\r\n{cid[:12]}\r\n")
            term.prompt()
            term.type("sh -c 'echo ar''med; sleep 300'\r")
            term.expect("armed\r\n")
            time.sleep(0.3)
            term.type("\x03")
            term.prompt()
            term.type("echo rc=$?\r")
            term.expect("rc=130")
            term.prompt()
            term.type("exit 5\r")
            assert term.exit_code() == 5
        finally:
            term.close()

        # A client that goes away hangs its session up: nothing is left running in the guest.
        orphan = subprocess.Popen([str(VENV_BIN / "isobox"), "exec", "-t", "vmtty", "sleep", "4242"],
                                  env=isobox.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "sleep 4242" not in _guest_processes(isobox, "vmtty"):
            assert time.monotonic() < deadline, "exec -t sleep did not start"
            time.sleep(0.2)
        orphan.kill()
        orphan.wait(10)
        deadline = time.monotonic() + 30
        while "4242" in _guest_processes(isobox, "vmtty"):
            assert time.monotonic() < deadline, "the abandoned session's command still runs"
            time.sleep(0.2)

        isobox.cli("stop", "vmtty", check=True)
        rest, err = run.communicate(timeout=60)
        assert rest == b"got-term\r\n", err
        assert run.returncode == 4
        logs = isobox.cli("logs", "vmtty", check=True).stdout
        assert "/dev/pts/0" in logs and "in-tty" in logs and "got-term" in logs
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        isobox.cli("rm", "-f", "vmtty")
    if cid:
        assert_vm_gone(isobox, cid)


def test_vm_kernel_panic_is_reported_with_the_console_and_cleaned_up(isobox: Isobox) -> None:
    """A workload that crashes the guest kernel (sysrq 'c' as the guest's root): a clear error
    naming the panic with the console lines leading to it, promptly; no QEMU, socket, overlay,
    exec process or row afterwards."""
    before = _leftovers(isobox)
    started = time.monotonic()
    # The sleep lets the guest's relay forward the line first: written to a pipe and followed at
    # once by the crash, it could die in the pipe's buffer (2 failures in 5 runs here, at the
    # session's first commit as on its last).
    res = isobox.cli("run", "--rm", "--isolation", "vm", "--network", "none", "busybox", "sh", "-c",
                     "echo about-to-crash; sleep 1; echo c > /proc/sysrq-trigger; echo survived", timeout=BOOT)
    elapsed = time.monotonic() - started
    assert res.returncode == 255, res.stderr
    assert res.stdout == "about-to-crash\n"
    assert "the guest kernel panicked (Kernel panic - not syncing: sysrq triggered crash)" in res.stderr
    console = res.stderr.split("last console lines:\n", 1)[1]
    assert "Kernel panic - not syncing: sysrq triggered crash" in console  # the tail leads up to it
    assert "sysrq: Trigger a crash" in console
    assert elapsed < 120, f"the panic took {elapsed:.0f} s to be reported"
    assert _leftovers(isobox) == before, "the panicked VM left something behind"
    assert processes_under(isobox.run_root / "v") == [], "a QEMU or monitor process outlived the panic"
