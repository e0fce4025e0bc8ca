"""`--isolation gvisor`: the same verbs as for containers, run by runsc; nothing left after rm."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import Isobox, require
from tests.integration.helpers import assert_gone, container_ids, mounts_mentioning

pytestmark = pytest.mark.root
require("runsc")

G = ("--isolation", "gvisor")


def _runsc_processes(container_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if container_id.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_sandbox_gone(box: Isobox, container_id: str) -> None:
    assert_gone(box, container_id)
    runsc_root = box.run_root / "runsc"
    leftovers = [p.name for p in runsc_root.iterdir() if container_id in p.name] if runsc_root.exists() else []
    assert leftovers == [], "runsc state left behind"
    assert _runsc_processes(container_id) == [], "sandbox processes left behind"
    assert mounts_mentioning(container_id[:16]) == [], "mount left behind"


def test_run_output_exit_code_and_errors(isobox: Isobox) -> None:
    before = container_ids(isobox)
    proc = isobox.cli("run", "--rm", *G, "busybox", "sh", "-c", "echo out; echo err >&2; uname -r; exit 42")
    assert proc.returncode == 42, proc.stderr
    assert proc.stdout.startswith("out\n") and "4.4.0" in proc.stdout  # the Sentry's, not the host's
    assert "err\n" in proc.stderr
    assert container_ids(isobox) == before
    assert isobox.cli("run", "--rm", *G, "busybox", "no-such-command").returncode == 127
    assert isobox.cli("run", "--rm", *G, "busybox", "/etc/passwd").returncode == 126


def test_flags_shape_the_process(isobox: Isobox, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from host\n")
    proc = isobox.cli("run", "--rm", *G, "-i", "-e", "G=hi", "-w", "/srv", "--hostname", "boxy",
                      "-v", f"{tmp_path}:/data", "busybox", "sh", "-c",
                      'read x; echo "$x|$G|$(pwd)|$(hostname)|$(cat /data/in.txt)"; echo new > /data/out.txt',
                      input="line\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "line|hi|/srv|boxy|from host"
    assert (tmp_path / "out.txt").read_text() == "new\n"
    proc = isobox.cli("run", "--rm", *G, "-u", "nobody", "busybox", "sh", "-c", 'echo "$(id -u):$(id -g)"')
    assert proc.stdout.strip() == "65534:65534"


def test_lifecycle_ps_exec_logs_stop_rm(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", *G, "busybox", "sh", "-c",
                     'echo started; trap "echo bye; exit 7" TERM; while true; do sleep 0.1; done',
                     check=True).stdout.strip()
    try:
        listed = json.loads(isobox.cli("ps", "--format", "json", check=True).stdout)
        assert [c["Isolation"] for c in listed if c["Id"] == cid] == ["gvisor"]
        proc = isobox.cli("exec", cid, "sh", "-c", "echo in; exit 5")
        assert (proc.returncode, proc.stdout) == (5, "in\n")
        assert isobox.cli("exec", "-t", cid, "sh", "-c", "test -t 1 && echo tty").stdout.strip() == "tty"
        applied = json.loads(isobox.cli("inspect", cid, check=True).stdout)[0]["Applied"]
        assert applied["Runtime"]["platform"] in ("systrap", "kvm", "ptrace")
        isobox.cli("stop", cid, check=True)
        assert isobox.cli("wait", cid).stdout.strip() == "7"
        deadline = time.monotonic() + 5
        while "bye" not in isobox.cli("logs", cid).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        assert isobox.cli("logs", cid).stdout.splitlines() == ["started", "bye"]
    finally:
        isobox.cli("rm", "-f", cid)
    assert_sandbox_gone(isobox, cid)


def test_rm_force_running_leaves_nothing(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", *G, "--memory", "256m", "busybox", "sleep", "60", check=True).stdout.strip()
    stats = json.loads(isobox.cli("stats", "--no-stream", "--format", "json", cid, check=True).stdout)
    assert stats[0]["memory_usage"] > 0  # the whole sandbox, charged to isobox's cgroup
    isobox.cli("rm", "-f", cid, check=True)
    assert_sandbox_gone(isobox, cid)


def test_init_is_refused_plainly(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", *G, "--init", "busybox", "true")
    assert proc.returncode == 125
    assert "--init" in proc.stderr
