"""The VM isolation level for real: few boots (each is seconds under TCG), many checks per boot.

The guest kernel and initramfs are prepared once into the shared cache (``ISOBOX_CACHE``); the
first test pays for it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from isobox import sysinfo
from tests.conftest import Isobox, require
from tests.integration.helpers import assert_vm_gone, inspect

pytestmark = pytest.mark.root
require("qemu-system-x86_64", "qemu-img")


def mapped_rss_kib(pid: int, paths: list[str]) -> dict[str, int]:
    """Resident KiB of process ``pid``'s mappings of ``paths`` (summed per path)."""
    found: dict[str, int] = {}
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            current = fields[5] if len(fields) > 5 and fields[5] in paths else None
        elif fields[0] == "Rss:" and current is not None:
            found[current] = found.get(current, 0) + int(fields[1])
    return found


def test_vm_run_applies_the_spec_and_returns_the_exit_code(isobox: Isobox, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    rw.chmod(0o777)  # the guest writes as uid 1000
    ro.mkdir()
    (ro / "in.txt").write_text("from-host\n")
    script = ('echo "$FOO"; pwd; id -u; id -g; hostname; nproc; grep MemTotal /proc/meminfo; '
              'cat /in/in.txt; echo from-guest > /out/g.txt; touch /in/x 2>/dev/null || echo ro-refused; '
              'cat; echo to-stderr >&2; exit 3')
    res = isobox.cli("run", "--rm", "-i", "--isolation", "vm", "-e", "FOO=bar baz", "-w", "/srv/work",
                     "-u", "1000:1000", "--hostname", "guest1", "--memory", "256m", "--cpus", "2",
                     "-v", f"{rw}:/out", "-v", f"{ro}:/in:ro", "busybox", "sh", "-c", script, input="piped\n", timeout=300)
    assert res.returncode == 3, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:6] == ["bar baz", "/srv/work", "1000", "1000", "guest1", "2"]
    mem_kib = int(lines[6].split()[1])
    assert 150_000 < mem_kib <= 256 * 1024
    assert lines[7:] == ["from-host", "ro-refused", "piped"]
    assert (rw / "g.txt").read_text() == "from-guest\n" and not (ro / "x").exists()
    assert "to-stderr" in res.stderr
    if sysinfo.accelerator()[0] == "tcg":
        assert "TCG" in res.stderr  # the warning


def test_vm_detached_logs_exec_cp_stop_rm(isobox: Isobox, tmp_path: Path) -> None:
    script = 'echo started; trap "echo got-term; exit 5" TERM; while true; do sleep 1; done'
    cid = isobox.cli("run", "-d", "--name", "vm1", "--isolation", "vm", "busybox", "sh", "-c", script,
                     check=True, timeout=300).stdout.strip().splitlines()[-1]
    try:
        info = inspect(isobox, "vm1")
        applied = info["Applied"]
        assert applied["Machine"] == "microvm" and applied["Accelerator"] in ("kvm", "tcg")
        assert "-sandbox on,obsolete=deny" in applied["QemuCommandLine"]
        assert applied["QemuPid"] == info["State"]["Pid"] and applied["KernelVersion"]
        # A PVH boot of the unpacked kernel (kernelimage.py), and QEMU's mappings of it and of
        # the initramfs handed back once the guest runs: no per-VM copy of either stays resident.
        assert Path(applied["Kernel"]).name.startswith("vmlinux-"), applied["Kernel"]
        assert Path(applied["Kernel"]).read_bytes()[:4] == b"\x7fELF"
        resident = mapped_rss_kib(applied["QemuPid"], [applied["Kernel"], applied["Initramfs"]])
        assert set(resident) == {applied["Kernel"], applied["Initramfs"]}, resident  # still mapped...
        assert all(kib < 1024 for kib in resident.values()), resident  # ...but not resident
        deadline = time.monotonic() + 30
        while "started" not in isobox.cli("logs", "vm1").stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "started" in isobox.cli("logs", "vm1").stdout

        res = isobox.cli("exec", "vm1", "sh", "-c", "echo out; echo err >&2; exit 4")
        assert (res.returncode, res.stdout, res.stderr) == (4, "out\n", "err\n")
        # qemu-ga runs at nice 19 (its start-up must not slow the workload); what it execs does not
        nice = isobox.cli("exec", "vm1", "cut", "-d", " ", "-f", "19", "/proc/self/stat", check=True).stdout
        assert nice.strip() == "0"

        src = tmp_path / "payload"
        src.write_bytes(bytes(range(256)) * 300)
        isobox.cli("cp", str(src), "vm1:/tmp/payload", check=True)
        back = tmp_path / "back"
        isobox.cli("cp", "vm1:/tmp/payload", str(back), check=True)
        assert back.read_bytes() == src.read_bytes()

        isobox.cli("exec", "vm1", "sh", "-c", "echo before > /state", check=True)
        isobox.cli("snapshot", "create", "vm1", "s1", check=True)
        isobox.cli("exec", "vm1", "sh", "-c", "echo after > /state", check=True)
        assert "s1" in isobox.cli("snapshot", "ls", "vm1", check=True).stdout
        isobox.cli("snapshot", "restore", "vm1", "s1", check=True)  # disk and memory
        assert isobox.cli("exec", "vm1", "cat", "/state", check=True).stdout == "before\n"
        isobox.cli("snapshot", "rm", "vm1", "s1", check=True)
        assert "s1" not in isobox.cli("snapshot", "ls", "vm1", check=True).stdout

        isobox.cli("stop", "vm1", check=True)  # SIGTERM reaches the workload: it exits 5
        state = inspect(isobox, "vm1")["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 5)
        assert "got-term" in isobox.cli("logs", "vm1").stdout
    finally:
        isobox.cli("rm", "-f", "vm1")
    assert_vm_gone(isobox, cid)


def test_vm_kill_and_force_remove(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "--isolation", "vm", "busybox", "sleep", "1000",
                     check=True, timeout=300).stdout.strip().splitlines()[-1]
    isobox.cli("kill", cid, check=True)
    assert isobox.cli("wait", cid, check=True).stdout.strip() == "137"
    isobox.cli("rm", cid, check=True)
    assert_vm_gone(isobox, cid)


def test_vm_disk_keeps_what_the_workload_wrote_before_its_exit(isobox: Isobox) -> None:
    """The monitor stops QEMU the moment the relay reports the exit: the relay syncs first (not for
    --rm), so a second start of the same VM finds what the first one wrote just before exiting."""
    script = "cat /keep 2>/dev/null; echo run >> /keep; exit 7"
    first = isobox.cli("run", "--name", "vmkeep", "--isolation", "vm", "busybox", "sh", "-c", script, timeout=300)
    cid = inspect(isobox, "vmkeep")["Id"]
    try:
        assert first.returncode == 7, first.stderr
        assert first.stdout == ""
        second = isobox.cli("start", "-a", "vmkeep", timeout=300)
        assert second.returncode == 7, second.stderr
        assert second.stdout.splitlines() == ["run"]
        assert inspect(isobox, "vmkeep")["State"]["ExitCode"] == 7
    finally:
        isobox.cli("rm", "-f", "vmkeep")
    assert_vm_gone(isobox, cid)


def test_vm_survives_a_daemon_kill(own_daemon: Isobox) -> None:
    """The monitor, not the daemon, owns QEMU: a restarted daemon re-adopts the running VM."""
    import os
    import signal

    box = own_daemon
    cid = box.cli("run", "-d", "--isolation", "vm", "busybox", "sleep", "300",
                  check=True, timeout=300).stdout.split()[-1]
    qemu_pid = inspect(box, cid)["State"]["Pid"]
    os.kill(int((box.run_root / "isobox.pid").read_text()), signal.SIGKILL)
    box.start_daemon()  # type: ignore[attr-defined]
    assert inspect(box, cid)["State"]["Status"] == "running"
    os.kill(qemu_pid, 0)  # still the same QEMU
    assert box.cli("exec", cid, "echo", "adopted", check=True).stdout == "adopted\n"
    box.cli("stop", "-t", "5", cid, check=True)
    state = inspect(box, cid)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 143)  # sleep died of SIGTERM
    box.cli("rm", cid, check=True)
    assert_vm_gone(box, cid)
