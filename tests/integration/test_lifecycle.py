"""create/start/stop/kill/rm/ps/logs/exec/inspect/wait/stats, and a daemon that dies."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import Isobox
from tests.integration.helpers import assert_gone, cgroup_dirs

pytestmark = pytest.mark.root


def detached(box: Isobox, *args: str) -> str:
    return box.cli("run", "-d", *args, check=True).stdout.strip()


def inspect(box: Isobox, ref: str) -> dict:
    return json.loads(box.cli("inspect", ref, check=True).stdout)[0]


def test_create_start_stop_rm(isobox: Isobox) -> None:
    cid = isobox.cli("create", "--name", "lifecycle", "busybox", "sleep", "60", check=True).stdout.strip()
    assert inspect(isobox, "lifecycle")["State"]["Status"] == "created"
    isobox.cli("start", "lifecycle", check=True)
    ps = json.loads(isobox.cli("ps", "--format", "json", check=True).stdout)
    assert [c["Names"] for c in ps if c["Id"] == cid] == [["lifecycle"]]
    assert cgroup_dirs(isobox, cid)
    started = time.monotonic()
    isobox.cli("stop", "-t", "1", "lifecycle", check=True)
    assert time.monotonic() - started >= 0.9  # sleep as PID 1 ignores SIGTERM: killed after 1 s
    state = inspect(isobox, cid)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 137
    assert cgroup_dirs(isobox, cid) == []
    isobox.cli("rm", "lifecycle", check=True)
    assert_gone(isobox, cid)


def test_rm_running_needs_force(isobox: Isobox) -> None:
    cid = detached(isobox, "busybox", "sleep", "60")
    proc = isobox.cli("rm", cid)
    assert proc.returncode == 125
    assert "running" in proc.stderr
    isobox.cli("rm", "-f", cid, check=True)
    assert_gone(isobox, cid)


def test_kill_with_signal(isobox: Isobox) -> None:
    cid = detached(isobox, "busybox", "sh", "-c", "trap 'exit 5' USR1; while true; do sleep 0.1; done")
    try:
        time.sleep(0.5)
        isobox.cli("kill", "-s", "USR1", cid, check=True)
        assert isobox.cli("wait", cid, check=True).stdout.strip() == "5"
    finally:
        isobox.cli("rm", "-f", cid)


def test_logs_and_follow(isobox: Isobox) -> None:
    cid = detached(isobox, "busybox", "sh", "-c", "echo one; echo two >&2; sleep 1; echo three")
    try:
        follow = isobox.cli("logs", "-f", cid, timeout=30)
        assert follow.stdout == "one\nthree\n"
        assert follow.stderr == "two\n"
        tail = isobox.cli("logs", "--tail", "1", cid, check=True)
        assert tail.stdout + tail.stderr == "three\n"
    finally:
        isobox.cli("rm", "-f", cid)


def test_exec_with_exit_code_and_stdin(isobox: Isobox) -> None:
    cid = detached(isobox, "--name", "exectarget", "-e", "FROM_RUN=1", "busybox", "sleep", "60")
    try:
        proc = isobox.cli("exec", "exectarget", "sh", "-c", "echo $FROM_RUN $$; exit 3")
        assert proc.returncode == 3
        assert proc.stdout.split()[0] == "1"
        assert proc.stdout.split()[1] != "1"
        proc = isobox.cli("exec", "-i", "exectarget", "wc", "-c", input="12345")
        assert proc.stdout.strip() == "5"
        assert isobox.cli("exec", "exectarget", "nope").returncode == 127
        # exec sees the container's world, with the same restrictions.
        proc = isobox.cli("exec", "exectarget", "sh", "-c", "hostname; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
        assert "NoNewPrivs:\t1" in proc.stdout and "Seccomp:\t2" in proc.stdout
    finally:
        isobox.cli("rm", "-f", cid)
    assert_gone(isobox, cid)


def test_exec_tty(isobox: Isobox) -> None:
    cid = detached(isobox, "busybox", "sleep", "60")
    try:
        proc = isobox.cli("exec", "-t", cid, "sh", "-c", "tty; test -t 1 && echo isatty")
        assert "/dev/pts/" in proc.stdout and "isatty" in proc.stdout
    finally:
        isobox.cli("rm", "-f", cid)


def test_run_tty(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "-t", "busybox", "sh", "-c", "test -t 0 && echo tty-ok")
    assert proc.returncode == 0, proc.stderr
    assert "tty-ok" in proc.stdout


def test_stats_no_stream(isobox: Isobox) -> None:
    cid = detached(isobox, "--memory", "64m", "busybox", "sleep", "60")
    try:
        proc = isobox.cli("stats", "--no-stream", cid, check=True)
        assert cid[:12] in proc.stdout
        assert "64MiB" in proc.stdout
    finally:
        isobox.cli("rm", "-f", cid)


def test_wait_returns_exit_code(isobox: Isobox) -> None:
    cid = detached(isobox, "busybox", "sh", "-c", "sleep 0.5; exit 9")
    try:
        assert isobox.cli("wait", cid, check=True).stdout.strip() == "9"
    finally:
        isobox.cli("rm", "-f", cid)


def test_ps_shows_exited_only_with_all(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "busybox", "true", check=True).stdout.strip()
    try:
        isobox.cli("wait", cid, check=True)
        assert cid[:12] not in isobox.cli("ps", check=True).stdout
        listing = isobox.cli("ps", "-a", check=True).stdout
        assert cid[:12] in listing and "Exited (0)" in listing
    finally:
        isobox.cli("rm", "-f", cid)


def test_workloads_survive_daemon_kill(own_daemon: Isobox) -> None:
    box = own_daemon
    long_id = detached(box, "--name", "survivor", "busybox", "sleep", "300")
    short_id = detached(box, "--name", "finisher", "busybox", "sh", "-c", "sleep 2; exit 7")
    daemon_pid = int((box.run_root / "isobox.pid").read_text())
    os.kill(daemon_pid, signal.SIGKILL)
    time.sleep(3)  # "finisher" ends while no daemon runs
    box.start_daemon()  # type: ignore[attr-defined]
    ps = json.loads(box.cli("ps", "--format", "json", check=True).stdout)
    assert [c["Id"] for c in ps] == [long_id]
    assert inspect(box, short_id)["State"]["ExitCode"] == 7
    assert inspect(box, short_id)["State"]["Status"] == "exited"
    box.cli("stop", "-t", "1", "survivor", check=True)
    assert inspect(box, long_id)["State"]["Status"] == "exited"
    box.cli("rm", long_id, short_id, check=True)
