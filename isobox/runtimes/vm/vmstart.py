"""The VM monitor's entry point: QEMU starts before the monitor imports the rest of isobox.

    python -m isobox.runtimes.vm.vmstart CONFIG.json STATUS_FD

Every millisecond before QEMU's exec is boot time, and the monitor's imports take ~60 ms; so
this module imports only what starting QEMU needs, starts it, then hands it to ``monitor.main``.
A VM with volumes needs its virtiofsd processes first: the monitor starts both, in that order.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


def start_qemu(argv: list[str], run_dir: str) -> subprocess.Popen[bytes]:
    """QEMU with its stdout and stderr in qemu.log (read for the error when it fails)."""
    log = os.open(os.path.join(run_dir, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
    finally:
        os.close(log)


def main() -> None:
    with open(sys.argv[1]) as fh:
        config = json.load(fh)
    qemu = None
    if not config.get("volumes"):
        with contextlib.suppress(OSError):  # the monitor tries again, and reports the error
            qemu = start_qemu(config["argv"], config["run_dir"])
    from isobox.runtimes.vm import monitor

    monitor.main(qemu)


if __name__ == "__main__":
    main()
