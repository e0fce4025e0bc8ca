"""Isolation facts checked from inside a real container: what a workload can and cannot do."""

from __future__ import annotations

import json
import os

import pytest

from isobox.runtimes.container import caps
from tests.conftest import Isobox

pytestmark = pytest.mark.root


def inside(box: Isobox, script: str, *flags: str) -> tuple[int, str, str]:
    proc = box.cli("run", "--rm", *flags, "busybox", "sh", "-c", script)
    return proc.returncode, proc.stdout, proc.stderr


def status_field(box: Isobox, name: str, *flags: str) -> str:
    code, out, err = inside(box, f"grep '^{name}:' /proc/self/status", *flags)
    assert code == 0, err
    return out.split(":", 1)[1].strip()


def test_capabilities_are_podmans_eleven(isobox: Isobox) -> None:
    expected = caps.mask(list(caps.DEFAULT_CAPS))
    assert int(status_field(isobox, "CapEff"), 16) == expected
    assert int(status_field(isobox, "CapBnd"), 16) == expected
    assert int(status_field(isobox, "CapInh"), 16) == 0


def test_cap_add_and_drop(isobox: Isobox) -> None:
    eff = int(status_field(isobox, "CapEff", "--cap-drop", "ALL", "--cap-add", "NET_RAW"), 16)
    assert eff == caps.mask(["NET_RAW"])
    eff = int(status_field(isobox, "CapEff", "--cap-drop", "chown"), 16)
    assert eff == caps.mask([c for c in caps.DEFAULT_CAPS if c != "CHOWN"])


def test_non_root_user_has_no_effective_caps(isobox: Isobox) -> None:
    assert int(status_field(isobox, "CapEff", "-u", "1000"), 16) == 0


def test_no_new_privs_and_seccomp_on_by_default(isobox: Isobox) -> None:
    assert status_field(isobox, "NoNewPrivs") == "1"
    assert status_field(isobox, "Seccomp") == "2"


def test_security_opts_lift_them(isobox: Isobox) -> None:
    assert status_field(isobox, "Seccomp", "--security-opt", "seccomp=unconfined") == "0"
    assert status_field(isobox, "NoNewPrivs", "--security-opt", "no-new-privileges=false") == "0"


def test_custom_seccomp_profile(isobox: Isobox, tmp_path) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    code, _out, err = inside(isobox, "mkdir /x", "--security-opt", f"seccomp={path}")
    assert code != 0
    assert "Operation not permitted" in err


def test_seccomp_blocks_dangerous_syscalls(isobox: Isobox) -> None:
    # unshare(2) of a new namespace is refused by the default profile without CAP_SYS_ADMIN.
    code, _out, err = inside(isobox, "unshare -n true")
    assert code != 0
    assert "Operation not permitted" in err


def test_host_processes_are_invisible(isobox: Isobox) -> None:
    code, out, err = inside(isobox, "ls /proc | grep -c '^[0-9]'")
    assert code == 0, err
    assert int(out) <= 3  # sh, grep, ls at most
    code, out, _ = inside(isobox, f"test -e /proc/{os.getpid()}/cmdline && cat /proc/{os.getpid()}/cmdline")
    assert "pytest" not in out


def test_mount_fails(isobox: Isobox) -> None:
    code, _out, _err = inside(isobox, "mkdir -p /mnt/x && mount -t tmpfs none /mnt/x")
    assert code != 0


def test_block_device_cannot_be_opened(isobox: Isobox) -> None:
    # Even with CAP_MKNOD the devices cgroup allows creating but not opening a block device.
    code, _out, err = inside(isobox, "mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk", "--cap-add", "MKNOD")
    assert code != 0
    assert "Operation not permitted" in err


def test_proc_paths_masked_and_read_only(isobox: Isobox) -> None:
    # (This host's kernel has no CONFIG_MAGIC_SYSRQ, so sysrq-trigger is checked where it exists.)
    code, out, err = inside(isobox, "test -e /proc/sysrq-trigger || { echo absent; exit 0; }; "
                                    "echo h > /proc/sysrq-trigger")
    if out.strip() != "absent":
        assert code != 0
        assert "Read-only file system" in err
    code, out, _ = inside(isobox, "grep -E ' /proc/(sys|sysrq-trigger|bus|fs|irq) ' /proc/self/mountinfo")
    mounts = [line.split() for line in out.splitlines()]
    assert {m[4] for m in mounts} >= {"/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"}
    assert all(m[5].split(",")[0] == "ro" for m in mounts)
    code, out, _ = inside(isobox, "cat /proc/kcore | wc -c; ls /proc/acpi 2>/dev/null | wc -l")
    assert out.split() == ["0", "0"]
    code, _out, err = inside(isobox, "echo 1 > /proc/sys/kernel/panic")
    assert code != 0


def test_sys_is_read_only_and_shows_only_own_links(isobox: Isobox) -> None:
    code, out, err = inside(isobox, "ls /sys/class/net")
    assert code == 0, err
    assert out.split() == ["eth0", "lo"]  # its own net namespace: none of the host's links
    code, out, err = inside(isobox, "ls /sys/class/net", "--network", "none")
    assert code == 0, err
    assert out.split() == ["lo"]
    code, _out, _err = inside(isobox, "touch /sys/x")
    assert code != 0
    code, out, _ = inside(isobox, "cat /sys/class/net/lo/operstate; ping -c1 -W1 127.0.0.1 >/dev/null; echo $?")
    assert out.split()[-1] in ("0", "1")  # lo is up; ping may lack NET_RAW, which is fine


def test_minimal_dev(isobox: Isobox) -> None:
    code, out, err = inside(isobox, "ls /dev")
    assert code == 0, err
    assert set(out.split()) == {"full", "null", "random", "tty", "urandom", "zero", "pts", "shm", "mqueue",
                                "ptmx", "fd", "stdin", "stdout", "stderr"}
    code, out, _ = inside(isobox, "head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo ok")
    assert out.split() == ["4", "ok"]


def test_hostname_is_the_containers(isobox: Isobox) -> None:
    code, out, _ = inside(isobox, "hostname", "--hostname", "inner")
    assert out.strip() == "inner"
    assert os.uname().nodename != "inner"


def test_memory_limit_kills_with_137_and_oomkilled(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "--memory", "32m", "busybox", "sh", "-c", "tail /dev/zero",
                     check=True).stdout.strip()
    try:
        waited = isobox.cli("wait", cid, check=True, timeout=120)
        assert waited.stdout.strip() == "137"
        state = json.loads(isobox.cli("inspect", cid, check=True).stdout)[0]["State"]
        assert state["OOMKilled"] is True
        assert state["ExitCode"] == 137
    finally:
        isobox.cli("rm", "-f", cid)


def test_pids_limit_stops_fork_bomb(isobox: Isobox) -> None:
    code, out, err = inside(isobox, "for i in $(seq 40); do sleep 5 & done; echo started", "--pids-limit", "16")
    assert "can't fork" in err or "Resource temporarily unavailable" in err, err
    # ...and without the limit flag the default (2048) lets the same loop through.
    code, out, err = inside(isobox, "for i in $(seq 40); do sleep 0.2 & done; wait; echo started")
    assert code == 0 and out.strip() == "started", err


def test_default_pids_limit_is_applied(isobox: Isobox) -> None:
    cid = isobox.cli("run", "-d", "busybox", "sleep", "30", check=True).stdout.strip()
    try:
        applied = json.loads(isobox.cli("inspect", cid, check=True).stdout)[0]["Applied"]
        assert applied["Cgroup"]["pids.max"] == "2048"
        # (reported by the monitor, which makes the cgroup: the directories the workload is in)
        paths = applied["Cgroup"]["paths"]
        assert paths and all(os.path.basename(p) == cid and os.path.isdir(p) for p in paths), paths
        assert applied["NoNewPrivileges"] is True
        assert applied["Seccomp"]["mode"] == "default"
        assert sorted(applied["Capabilities"]) == sorted(caps.DEFAULT_CAPS)
    finally:
        isobox.cli("rm", "-f", cid)


def test_no_host_fds_leak_into_workload(isobox: Isobox) -> None:
    code, out, _ = inside(isobox, "ls /proc/self/fd")
    assert sorted(out.split(), key=int) == ["0", "1", "2", "3"]  # 3 is ls's own directory fd
