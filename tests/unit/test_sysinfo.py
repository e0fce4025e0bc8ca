"""``system info``: runs for real on this host; assertions follow what the host has."""

from __future__ import annotations

import os
import sys

from isobox import sysinfo

NAMES = {
    "kvm", "cgroups", "seccomp", "user_namespaces", "overlayfs", "qemu", "qemu_img", "ovmf",
    "runsc", "runc", "podman", "busybox_static", "pidfd", "cgroup_ns",
}


def _checks(info: dict) -> dict[str, dict]:
    return {c["name"]: c for c in info["checks"]}


def test_collect_reports_every_check_with_a_valid_status() -> None:
    info = sysinfo.collect()
    checks = _checks(info)
    assert set(checks) == NAMES
    assert len(info["checks"]) == len(NAMES)  # no duplicates
    for check in info["checks"]:
        assert check["status"] in sysinfo.STATUSES, check
        assert check["detail"], check
        if check["status"] == sysinfo.MISSING:
            assert check["hint"], f"{check['name']} is missing but gives no hint"


def test_host_facts() -> None:
    host = sysinfo.collect()["host"]
    assert host["kernel"] == os.uname().release
    assert host["cpus"] >= 1
    assert host["memory"] > 64 << 20
    assert host["root"] == (os.geteuid() == 0)
    assert isinstance(host["os"], str) and host["os"]


def test_kvm_matches_the_machine() -> None:
    kvm = _checks(sysinfo.collect())["kvm"]
    accel, reason = sysinfo.accelerator()
    if not os.path.exists("/dev/kvm"):
        assert kvm["status"] == "missing"
        assert "TCG" in kvm["hint"]
    elif os.path.isdir("/sys/module/kvm_pvm"):
        assert kvm["status"] == "warn"
        assert "PVM" in kvm["detail"]
        assert "TCG" in kvm["detail"] + kvm["hint"]
    if kvm["status"] == "ok":
        assert accel == "kvm"
        assert any(os.path.isdir(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd"))
    else:
        assert accel == "tcg"
        assert reason == kvm["detail"]


def test_cgroups_detail_names_version_and_controllers() -> None:
    cg = _checks(sysinfo.collect())["cgroups"]
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    v2 = any(m[1] == "/sys/fs/cgroup" and m[2] == "cgroup2" for m in mounts)
    v1 = any(m[2] == "cgroup" for m in mounts)
    if v2:
        assert cg["detail"].startswith("v2:")
    elif v1:
        assert cg["detail"].startswith("v1")
        hybrid = any(m[2] == "cgroup2" for m in mounts)
        assert ("(hybrid)" in cg["detail"]) == hybrid
        for m in mounts:
            if m[2] == "cgroup" and "memory" in m[3].split(","):
                assert "memory" in cg["detail"].split()


def test_programs_match_path() -> None:
    import shutil

    checks = _checks(sysinfo.collect())
    for name, binary in [("qemu", "qemu-system-x86_64"), ("qemu_img", "qemu-img"), ("runsc", "runsc"),
                         ("runc", "runc"), ("podman", "podman")]:
        found = shutil.which(binary)
        assert (checks[name]["status"] == "ok") == (found is not None), name
        if found:
            assert found in checks[name]["detail"]
        else:
            assert checks[name]["hint"].startswith("apt-get install")
            assert checks[name]["optional"] is True
    if shutil.which("qemu-system-x86_64"):
        assert "QEMU" in checks["qemu"]["detail"]


def test_pidfd_and_cgroup_ns() -> None:
    checks = _checks(sysinfo.collect())
    assert (checks["cgroup_ns"]["status"] == "ok") == os.path.exists("/proc/self/ns/cgroup")
    assert checks["pidfd"]["status"] in ("ok", "missing")
    if checks["pidfd"]["status"] == "ok":
        os.close(os.pidfd_open(os.getpid()))


def test_elf_static_detection() -> None:
    assert sysinfo._elf_is_dynamic(os.path.realpath(sys.executable))
    if os.path.exists("/bin/busybox"):
        assert not sysinfo._elf_is_dynamic("/bin/busybox")
    assert not sysinfo._elf_is_dynamic("/proc/self/status")  # not ELF: nothing to say


def test_short_version() -> None:
    assert sysinfo._short_version("QEMU emulator version 7.2.22 (Debian 1:7.2)\nCopyright\n") == "QEMU 7.2.22 (Debian 1:7.2)"
    assert sysinfo._short_version("runsc version release-20221219.0\nspec: 1.0.2\n") == "runsc release-20221219.0"
    assert sysinfo._short_version("") is None


def test_render_lists_every_check_with_markers_and_hints() -> None:
    info = sysinfo.collect()
    text = sysinfo.render(info)
    for name in NAMES:
        assert name in text
    for check in info["checks"]:
        line = next(x for x in text.splitlines() if f" {check['name']} " in x)
        assert line.lstrip()[0] == {"ok": "✓", "warn": "!", "missing": "✗"}[check["status"]]
        if check["hint"]:
            assert check["hint"] in text


def test_render_layout_on_fixed_input() -> None:
    info = {
        "host": {"kernel": "6.1.0", "os": "Debian GNU/Linux 12 (bookworm)", "cpus": 2, "memory": 2 << 30, "root": True},
        "checks": [
            {"name": "kvm", "status": "warn", "detail": "PVM", "hint": "VMs will run under TCG (slow)"},
            {"name": "user_namespaces", "status": "ok", "detail": "max 10", "hint": None},
            {"name": "runsc", "status": "missing", "detail": "runsc not found", "hint": "apt-get install runsc",
             "optional": True},
        ],
    }
    assert sysinfo.render(info).splitlines() == [
        "Host: Debian GNU/Linux 12 (bookworm), kernel 6.1.0, 2 CPUs, 2.0 GiB memory, running as root",
        "",
        "  ! kvm              PVM",
        "                     → VMs will run under TCG (slow)",
        "  ✓ user_namespaces  max 10",
        "  ✗ runsc            runsc not found (optional)",
        "                     → apt-get install runsc",
    ]
