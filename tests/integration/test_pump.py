"""Long-running workloads are handed from the Python monitor to the C pump (pump.c).

Everything a client and the daemon rely on must keep working across that exec: output and
the log, stdin, signals from an attached client, the exit code, OOM detection, cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import VENV_BIN, Isobox
from tests.integration.helpers import assert_gone

pytestmark = pytest.mark.root

PUMP = VENV_BIN.parent / "libexec" / "isobox-pump"


@pytest.fixture(autouse=True)
def _pump_built() -> None:
    assert PUMP.exists(), "scripts/setup.sh builds the C pump"


def inspect(box: Isobox, ref: str) -> dict:
    return json.loads(box.cli("inspect", ref, check=True).stdout)[0]


def test_monitor_becomes_the_c_pump(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "busybox", "sh", "-c", "echo before; sleep 2; echo after; exit 4",
                     check=True).stdout.strip()
    try:
        time.sleep(1.2)
        monitor = inspect(isobox, cid)["Monitor"]["Pid"]
        assert os.readlink(f"/proc/{monitor}/exe") == str(PUMP)
        assert isobox.cli("wait", cid, check=True).stdout.strip() == "4"
        logs = isobox.cli("logs", cid, check=True)
        assert logs.stdout == "before\nafter\n"
    finally:
        isobox.cli("rm", "-f", cid)
    assert_gone(isobox, cid)


def test_attached_stdin_and_output_across_handover(isobox: Isobox) -> None:
    proc = subprocess.Popen([str(VENV_BIN / "isobox"), "run", "--rm", "-i", "busybox", "sh", "-c",
                             "read line; echo got:$line; read more; echo got:$more"],
                            env=isobox.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    time.sleep(1.2)  # the Python monitor has handed over by now
    proc.stdin.write("one\n")
    proc.stdin.flush()
    time.sleep(0.3)
    proc.stdin.write("two\n")
    proc.stdin.close()
    proc.stdin = None
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait(30)
    assert proc.returncode == 0
    assert out == "got:one\ngot:two\n"


def test_signal_forwarded_from_client_after_handover(isobox: Isobox) -> None:
    proc = subprocess.Popen([str(VENV_BIN / "isobox"), "run", "--rm", "busybox", "sh", "-c",
                             "trap 'echo caught; exit 3' TERM; echo ready; while true; do sleep 0.1; done"],
                            env=isobox.env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(1.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert out == "caught\n"
    assert proc.returncode == 3


def test_oom_after_handover(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "--memory", "32m", "busybox", "sh", "-c", "sleep 1; tail /dev/zero",
                     check=True).stdout.strip()
    try:
        assert isobox.cli("wait", cid, check=True, timeout=120).stdout.strip() == "137"
        assert inspect(isobox, cid)["State"]["OOMKilled"] is True
    finally:
        isobox.cli("rm", "-f", cid)
    assert_gone(isobox, cid)


def test_stop_after_handover_leaves_nothing(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "busybox", "sleep", "300", check=True).stdout.strip()
    time.sleep(1)
    isobox.cli("stop", "-t", "1", cid, check=True)
    assert inspect(isobox, cid)["State"]["ExitCode"] == 137
    isobox.cli("rm", cid, check=True)
    assert_gone(isobox, cid)
