"""The VM monitor's entry point.

    python -m isobox.runtimes.vm.vmstart CONFIG.json STATUS_FD

Every millisecond before QEMU's exec is boot time, and an interpreter's start-up and the
monitor's imports take ~35 + 60 ms; so a VM without volumes comes here with QEMU already
running: ``isobox-run --launch`` (guestrun.c) forked it and exec'd this interpreter in its own
process, which is thus QEMU's parent (``ISOBOX_QEMU_PID``).  A VM with volumes needs its
virtiofsd processes first: the monitor starts both (``start_qemu``), in that order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


class Adopted:
    """QEMU as a child this process did not start with Popen (see above): Popen's poll, wait
    and kill, which are all the monitor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["qemu"], timeout or 0)
            time.sleep(0.01)
        return code

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


Qemu = subprocess.Popen[bytes] | Adopted


def start_qemu(argv: list[str], run_dir: str) -> subprocess.Popen[bytes]:
    """QEMU with its stdout and stderr in qemu.log (read for the error when it fails)."""
    log = os.open(os.path.join(run_dir, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
    finally:
        os.close(log)


def main() -> None:
    launched = os.environ.pop("ISOBOX_QEMU_PID", None)
    from isobox.runtimes.vm import monitor

    monitor.main(Adopted(int(launched)) if launched else None)


if __name__ == "__main__":
    main()
