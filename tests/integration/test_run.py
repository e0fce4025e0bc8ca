"""`isobox run` end to end: output, exit codes, flags that shape the process."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import Isobox
from tests.integration.helpers import assert_gone, container_ids

pytestmark = pytest.mark.root


def test_run_prints_output_and_is_removed(isobox: Isobox) -> None:
    before = container_ids(isobox)
    proc = isobox.cli("run", "--rm", "busybox", "echo", "hello from isobox")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from isobox\n"
    assert container_ids(isobox) == before


def test_exit_code_is_the_workloads(isobox: Isobox) -> None:
    assert isobox.cli("run", "--rm", "busybox", "sh", "-c", "exit 42").returncode == 42


def test_stdout_and_stderr_are_separate(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert proc.stdout == "out\n"
    assert "err\n" in proc.stderr


def test_missing_command_exits_127(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "busybox", "no-such-command")
    assert proc.returncode == 127
    assert "no-such-command" in proc.stderr


def test_non_executable_exits_126(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "busybox", "/etc/passwd")
    assert proc.returncode == 126
    assert "permission denied" in proc.stderr


def test_stdin_with_interactive(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "-i", "busybox", "tr", "a-z", "A-Z", input="shout\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "SHOUT\n"


def test_env_workdir_user_hostname(isobox: Isobox) -> None:
    proc = isobox.cli(
        "run", "--rm", "-e", "GREETING=hi there", "-w", "/srv/app", "-u", "1000:1000", "--hostname", "boxy",
        "busybox", "sh", "-c", 'echo "$GREETING|$(pwd)|$(id -u):$(id -g)|$(hostname)"',
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hi there|/srv/app|1000:1000|boxy"


def test_user_by_name(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "-u", "nobody", "busybox", "id", "-u")
    assert proc.stdout.strip() == "65534"


def test_default_hostname_is_short_id(isobox: Isobox) -> None:
    created = isobox.cli("run", "-d", "busybox", "sleep", "30", check=True).stdout.strip()
    try:
        proc = isobox.cli("exec", created, "hostname", check=True)
        assert proc.stdout.strip() == created[:12]
    finally:
        isobox.cli("rm", "-f", created, check=True)
    assert_gone(isobox, created)


def test_volume_rw_and_ro(isobox: Isobox, tmp_path) -> None:
    (tmp_path / "in.txt").write_text("from host\n")
    proc = isobox.cli("run", "--rm", "-v", f"{tmp_path}:/data", "busybox", "sh", "-c",
                      "cat /data/in.txt; echo from container > /data/out.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from host\n"
    assert (tmp_path / "out.txt").read_text() == "from container\n"
    proc = isobox.cli("run", "--rm", "-v", f"{tmp_path}:/data:ro", "busybox", "sh", "-c",
                      "echo x > /data/other.txt")
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    assert not (tmp_path / "other.txt").exists()


def test_read_only_root(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "--read-only", "busybox", "touch", "/file")
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    # /dev/shm stays writable, as in Docker.
    assert isobox.cli("run", "--rm", "--read-only", "busybox", "touch", "/dev/shm/ok").returncode == 0


def test_writes_persist_across_restart_but_not_across_containers(isobox: Isobox) -> None:
    cid = isobox.cli("create", "busybox", "sh", "-c", "cat /state 2>/dev/null; echo run >> /state",
                     check=True).stdout.strip()
    try:
        isobox.cli("start", "-a", cid, check=True)
        second = isobox.cli("start", "-a", cid, check=True)
        assert second.stdout == "run\n"
        other = isobox.cli("run", "--rm", "busybox", "cat", "/state")
        assert other.returncode == 1
    finally:
        isobox.cli("rm", "-f", cid, check=True)


def test_init_reaps_and_forwards(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "--init", "busybox", "sh", "-c", "echo $$")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != "1"  # the workload is a child of the init
    cid = isobox.cli("run", "-d", "--init", "busybox", "sleep", "60", check=True).stdout.strip()
    try:
        isobox.cli("stop", "-t", "20", cid, check=True)
        state = json.loads(isobox.cli("inspect", cid, check=True).stdout)[0]["State"]
        assert state["ExitCode"] == 143  # SIGTERM reached sleep through the init: no 20 s wait
    finally:
        isobox.cli("rm", "-f", cid)


def test_init_is_isobox_init_from_a_sealed_memfd(isobox: Isobox) -> None:
    """--init's PID 1 is the static isobox-init: no host path or daemon command line inside,
    and its executable cannot be written from the container (CVE-2019-5736's target)."""
    script = ('cat /proc/1/cmdline | tr "\\0" " "; echo; readlink /proc/1/exe; '
              'echo x > /proc/1/exe && echo WROTE; exit 3')
    proc = isobox.cli("run", "--rm", "--init", "busybox", "sh", "-c", script)
    assert proc.returncode == 3, proc.stderr
    cmdline, exe = proc.stdout.splitlines()[:2]
    assert cmdline.startswith("isobox-init ") and cmdline.rstrip().endswith(f"-- sh -c {script}")
    assert exe.startswith("/memfd:isobox-init")
    assert "WROTE" not in proc.stdout.splitlines()[2:]
    missing = isobox.cli("run", "--rm", "--init", "busybox", "no-such-command")
    assert missing.returncode == 127
    assert 'exec: "no-such-command": executable file not found in $PATH' in missing.stderr


def test_workload_is_pid_1(isobox: Isobox) -> None:
    proc = isobox.cli("run", "--rm", "busybox", "sh", "-c", "echo $$")
    assert proc.stdout.strip() == "1"


@pytest.mark.parametrize("init,zombies", [(True, "0"), (False, "1")])
def test_init_reaps_orphaned_zombies(isobox: Isobox, init: bool, zombies: str) -> None:
    # The inner sh leaves a short sleep to be re-parented to PID 1, which then becomes a
    # long sleep that never calls wait(): only an init reaps the orphan.
    flags = ["--init"] if init else []
    cid = isobox.cli("run", "-d", *flags, "busybox", "sh", "-c", "sh -c 'sleep 0.2 &'; exec sleep 60",
                     check=True).stdout.strip()
    try:
        time.sleep(1.5)
        proc = isobox.cli("exec", cid, "sh", "-c", "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l", check=True)
        assert proc.stdout.strip() == zombies
    finally:
        isobox.cli("rm", "-f", cid)
