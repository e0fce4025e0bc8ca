"""Firmware boot of VM disk images for real, under TCG here: a Debian system disk that isobox
builds itself boots through SeaBIOS to a login prompt on the serial console with its own kernel,
and through OVMF as far as that kernel; imported disks and ISOs boot on q35; nothing is left
behind.  One booted Debian VM serves every check that needs a running OS.

Measured on the 2-core TCG CI machine: the build ~50 s (once per test session: the disk is
cached as an image), SeaBIOS to ``login:`` ~35 s, OVMF to the kernel ~15 s.
"""

from __future__ import annotations

import json
import os
import platform
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import VENV_BIN, Isobox, require
from tests.integration.helpers import assert_vm_gone, inspect

pytestmark = pytest.mark.root
require("qemu-system-x86_64", "qemu-img", "mmdebstrap", "sfdisk", "mkfs.fat", "mkfs.ext4", "syslinux", "mcopy",
        "/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi",
        "/usr/lib/syslinux/modules/efi64/ldlinux.e64", "/usr/share/OVMF/OVMF_CODE_4M.fd")

BOOTABLE = "debian:bookworm-bootable"
LOGIN_TIMEOUT = 300.0  # ~35 s measured; generous for a loaded CI machine
KERNEL_LINE = re.compile(r"Linux version (\S+)")
VM = ("--isolation", "vm")


def _wait_console(box: Isobox, name: str, *texts: str, timeout: float) -> str:
    """The VM's console (``isobox logs``) once it shows every one of ``texts``."""
    deadline = time.monotonic() + timeout
    while True:
        out = box.cli("logs", name).stdout
        if all(t in out for t in texts) or time.monotonic() > deadline:
            missing = [t for t in texts if t not in out]
            assert not missing, f"{missing} not on the console after {timeout:.0f} s; tail:\n{out[-1500:]}"
            return out
        time.sleep(1)


@pytest.fixture(scope="module")
def bootable(isobox: Isobox) -> str:
    done = isobox.cli("image", "build", "debian:bookworm", "--bootable", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return BOOTABLE


@pytest.fixture(scope="module")
def booted(isobox: Isobox, bootable: str) -> Iterator[dict]:
    started = time.monotonic()
    cid = isobox.cli("run", "-d", "--name", "fwdebian", *VM, bootable, check=True).stdout.split()[-1]
    try:
        console = _wait_console(isobox, "fwdebian", "login:", timeout=LOGIN_TIMEOUT)
        print(f"\nSeaBIOS boot to login: {time.monotonic() - started:.1f} s")
        yield {"id": cid, "console": console, **inspect(isobox, cid)}
    finally:
        isobox.cli("rm", "-f", cid)


def test_the_bootable_disk_is_a_cached_vm_only_image(isobox: Isobox, bootable: str) -> None:
    info = json.loads(isobox.cli("image", "inspect", bootable, check=True).stdout)[0]
    assert info["RootFS"]["Layers"] == [] and info["Disk"]["kind"] == "disk"
    assert info["Disk"]["stored_format"] == "qcow2" and info["Disk"]["kernel"].endswith("-cloud-amd64")
    assert "--bootable" in info["History"][0]["created_by"]
    started = time.monotonic()
    again = isobox.cli("image", "build", "debian:bookworm", "--bootable", check=True)
    assert time.monotonic() - started < 20 and "cached" in again.stderr
    assert json.loads(isobox.cli("image", "inspect", bootable, check=True).stdout)[0]["Id"] == info["Id"]
    refused = isobox.cli("run", "--rm", "--network", "none", bootable)
    assert refused.returncode == 125 and "VM disk image" in refused.stderr


def test_seabios_boots_it_to_a_login_prompt_with_its_own_kernel(isobox: Isobox, booted: dict) -> None:
    console = booted["console"]
    # firmware -> bootloader -> the disk's kernel -> systemd -> getty, all on the serial console
    order = [console.index(mark) for mark in ("SeaBIOS (version", "Booting from Hard Disk", "SYSLINUX",
                                              "Linux version", "login:")]
    assert order == sorted(order), order
    guest_kernel = KERNEL_LINE.search(console).group(1)  # type: ignore[union-attr]
    assert guest_kernel != platform.release()
    image = json.loads(isobox.cli("image", "inspect", BOOTABLE, check=True).stdout)[0]
    assert guest_kernel == image["Disk"]["kernel"]
    assert "debian login:" in console  # the hostname the build set

    applied = inspect(isobox, "fwdebian")["Applied"]
    assert applied["Machine"] == "q35" and applied["Firmware"]["Type"] == "bios"
    assert "SeaBIOS" in applied["Firmware"]["Code"] and applied["Boot"] == "disk"
    cmdline = applied["QemuCommandLine"]
    assert "-machine q35,graphics=off" in cmdline and "-sandbox on,obsolete=deny" in cmdline
    assert "virtio-blk-pci,drive=root" in cmdline and "-kernel" not in cmdline
    overlay = Path(applied["RootDisk"]["overlay"])
    backing = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output", "json", str(overlay)],
                                        check=True, capture_output=True, text=True).stdout)
    assert backing["backing-filename"] == applied["RootDisk"]["base"]


def test_exec_cp_and_console_reach_the_running_os(isobox: Isobox, booted: dict, tmp_path: Path) -> None:
    deadline = time.monotonic() + 60  # qemu-ga starts beside the getty, not before it
    while (res := isobox.cli("exec", "fwdebian", "uname", "-r")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(2)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == KERNEL_LINE.search(booted["console"]).group(1)  # type: ignore[union-attr]
    res = isobox.cli("exec", "-e", "GREETING=hi there", "fwdebian", "sh", "-c",
                     'echo "$GREETING"; cat /etc/hostname; grep ^root: /etc/shadow | cut -d: -f2; exit 7')
    assert (res.returncode, res.stdout.split("\n")[:3]) == (7, ["hi there", "debian", "!*"])  # root is locked

    src = tmp_path / "payload"
    src.write_bytes(bytes(range(256)) * 200)
    isobox.cli("cp", str(src), "fwdebian:/root/payload", check=True)
    isobox.cli("cp", "fwdebian:/root/payload", str(tmp_path / "back"), check=True)
    assert (tmp_path / "back").read_bytes() == src.read_bytes()

    # the serial console is interactive: the getty asks for a password after a user name
    proc = subprocess.Popen([str(VENV_BIN / "isobox"), "console", "fwdebian"], env=isobox.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"root\n")
        proc.stdin.flush()
        seen = _read_until(proc.stdout, b"Password:", timeout=60)
        assert b"Password:" in seen, seen[-500:]
    finally:
        proc.kill()
        proc.wait()


def test_a_kernel_installed_in_the_guest_goes_to_the_boot_partition(isobox: Isobox, booted: dict) -> None:
    """The firmware boots the FAT partition's /vmlinuz: the hook the kernel package runs copies
    the kernel installed last there (a new version is simulated: no mirror is reachable here)."""
    deadline = time.monotonic() + 60
    while (res := isobox.cli("exec", "fwdebian", "mountpoint", "/boot/firmware")).returncode != 0 \
            and time.monotonic() < deadline:
        time.sleep(2)
    assert res.returncode == 0, res.stdout + res.stderr  # the guest mounts its boot partition
    script = (
        "set -e; v=$(uname -r); cmp /boot/vmlinuz-$v /boot/firmware/vmlinuz; cat /boot/firmware/isobox-kernel-version;"
        " cp /boot/vmlinuz-$v /boot/vmlinuz-9.9.9-test; echo new >> /boot/vmlinuz-9.9.9-test;"
        " cp /boot/initrd.img-$v /boot/initrd.img-9.9.9-test;"
        " /etc/kernel/postinst.d/zz-isobox-boot 9.9.9-test /boot/vmlinuz-9.9.9-test;"
        " cmp /boot/vmlinuz-9.9.9-test /boot/firmware/vmlinuz; cat /boot/firmware/isobox-kernel-version;"
        " /etc/initramfs/post-update.d/zz-isobox-boot $v /boot/initrd.img-$v;"  # not the booting one: no change
        " cmp /boot/vmlinuz-9.9.9-test /boot/firmware/vmlinuz;"
        " /etc/kernel/postinst.d/zz-isobox-boot $v; rm /boot/*-9.9.9-test;"  # back to the real kernel
        " cmp /boot/vmlinuz-$v /boot/firmware/vmlinuz; cmp /boot/initrd.img-$v /boot/firmware/initrd.img;"
        " cat /boot/firmware/isobox-kernel-version")
    res = isobox.cli("exec", "fwdebian", "sh", "-c", script, timeout=120)
    kernel = KERNEL_LINE.search(booted["console"]).group(1)  # type: ignore[union-attr]
    assert (res.returncode, res.stdout.split()) == (0, [kernel, "9.9.9-test", kernel]), res.stdout + res.stderr


def test_the_os_takes_its_leased_address_by_dhcp_and_is_reachable(isobox: Isobox, booted: dict) -> None:
    """A full OS configures its own network: systemd-networkd asks DHCP, the network's dnsmasq
    answers with the address isobox leased; a container on the network then reaches it."""
    leased = booted["NetworkSettings"]["Networks"]["isobox"]["IPAddress"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        res = isobox.cli("exec", "fwdebian", "hostname", "-I")  # (minbase has no iproute2)
        if res.returncode == 0 and leased in res.stdout.split():
            break
        time.sleep(2)
    assert leased in res.stdout.split(), res.stdout + res.stderr
    ping = isobox.cli("run", "--rm", "--cap-add", "NET_RAW", "busybox", "ping", "-c", "1", "-W", "5", leased)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def _read_until(stream: IO[bytes], mark: bytes, timeout: float) -> bytes:
    fd = stream.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while mark not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            data = os.read(fd, 65536)
            if not data:
                break
            seen += data
    return seen


def test_stop_presses_the_acpi_power_button(isobox: Isobox, booted: dict) -> None:
    started = time.monotonic()
    isobox.cli("stop", "-t", "120", "fwdebian", check=True, timeout=180)
    info = inspect(isobox, "fwdebian")
    assert info["State"]["Status"] == "exited"
    assert info["State"]["ExitCode"] == 0, "powered off by the guest, not killed"
    assert "reboot: Power down" in isobox.cli("logs", "fwdebian").stdout
    assert time.monotonic() - started < 120
    isobox.cli("rm", "fwdebian", check=True)
    assert_vm_gone(isobox, booted["id"])


def test_uefi_boots_the_same_disk(isobox: Isobox, bootable: str) -> None:
    """What this proves: OVMF (Debian's, from QEMU's firmware descriptor) runs from read-only
    pflash with the VM's own variable store, finds the disk's \\EFI\\BOOT\\BOOTX64.EFI (SYSLINUX's
    EFI build) and that loader starts the disk's kernel.  The rest of the boot is the one the
    SeaBIOS test follows to the login prompt, so it is not waited for again."""
    cid = isobox.cli("run", "-d", "--name", "fwuefi", "--firmware", "uefi", *VM, bootable,
                     check=True).stdout.split()[-1]
    try:
        # "DMI:" too: the kernel prints it a moment after its version line, and a snapshot of the
        # console taken in between failed this test once
        console = _wait_console(isobox, "fwuefi", "BdsDxe: starting", "Linux version", "DMI:",
                                timeout=LOGIN_TIMEOUT)
        assert console.index("BdsDxe: starting") < console.index("Linux version")
        assert re.search(r"DMI: .*Q35.*BIOS 0\.0\.0", console), "EDK II's SMBIOS, not SeaBIOS's"
        applied = inspect(isobox, "fwuefi")["Applied"]
        assert applied["Machine"] == "q35" and applied["Firmware"]["Type"] == "uefi"
        vars_store = Path(applied["Firmware"]["Vars"])
        assert vars_store.parent == isobox.root / "containers" / cid and vars_store.is_file()
        assert f"if=pflash,format=raw,unit=0,readonly=on,file={applied['Firmware']['Code']}" in applied["QemuCommandLine"]
        assert f"if=pflash,format=qcow2,unit=1,file={vars_store}" in applied["QemuCommandLine"]
        # Snapshots take the variable store along: savevm needs every writable drive to take one.
        isobox.cli("snapshot", "create", "fwuefi", "s1", check=True, timeout=300)
        listed = isobox.cli("snapshot", "ls", "fwuefi", check=True).stdout
        assert "s1" in listed
        in_vars = subprocess.run(["qemu-img", "snapshot", "-l", "-U", str(vars_store)], check=True,
                                 capture_output=True, text=True).stdout
        assert " s1 " in in_vars, in_vars
        isobox.cli("snapshot", "restore", "fwuefi", "s1", check=True, timeout=300)
        isobox.cli("snapshot", "rm", "fwuefi", "s1", check=True, timeout=300)
        assert "s1" not in isobox.cli("snapshot", "ls", "fwuefi", check=True).stdout
    finally:
        isobox.cli("rm", "-f", "fwuefi", check=True)  # while it runs
    assert_vm_gone(isobox, cid)


def test_imported_disk_and_iso_boot_on_q35_and_rm_f_leaves_nothing(isobox: Isobox, tmp_path: Path) -> None:
    """A blank imported disk: SeaBIOS on q35 tries it (and says it is not bootable) and keeps
    running; an ISO goes in as a CD-ROM behind a blank disk, here under UEFI."""
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M"], check=True)
    iso = tmp_path / "fake.iso"
    data = bytearray(64 * 1024)
    data[0x8001:0x8006] = b"CD001"
    iso.write_bytes(bytes(data))
    isobox.cli("image", "import-disk", "-q", str(blank), "--name", "localhost/blank:1", check=True)
    isobox.cli("image", "import-disk", "-q", str(iso), "--name", "localhost/iso:1", check=True)
    try:
        disk_vm = isobox.cli("run", "-d", *VM, "localhost/blank:1", check=True).stdout.split()[-1]
        iso_vm = isobox.cli("run", "-d", "--firmware", "uefi", *VM, "localhost/iso:1", check=True).stdout.split()[-1]
        console = _wait_console(isobox, disk_vm, "SeaBIOS (version", "Booting from Hard Disk",
                                "not a bootable disk", timeout=120)
        assert "Linux version" not in console
        applied = inspect(isobox, disk_vm)["Applied"]
        assert (applied["Machine"], applied["Firmware"]["Type"], applied["Boot"]) == ("q35", "bios", "disk")
        assert inspect(isobox, disk_vm)["State"]["Running"]

        _wait_console(isobox, iso_vm, "UEFI", timeout=120)
        applied = inspect(isobox, iso_vm)["Applied"]
        assert applied["Boot"] == "cdrom" and applied["RootDisk"]["cdrom"].endswith(
            json.loads(isobox.cli("image", "inspect", "localhost/iso:1", check=True).stdout)[0]["Disk"]["digest"][7:])
        assert "ide-cd,drive=cd,bus=ide.0,bootindex=2" in applied["QemuCommandLine"]
        for cid in (disk_vm, iso_vm):
            pid = inspect(isobox, cid)["State"]["Pid"]
            sockets = list((isobox.run_root / "v" / cid[:16]).glob("*.sock"))
            assert pid and sockets
            isobox.cli("rm", "-f", cid, check=True)
            assert_vm_gone(isobox, cid)
            assert not Path(f"/proc/{pid}").exists() and not any(s.exists() for s in sockets)
    finally:
        isobox.cli("image", "rm", "-f", "localhost/blank:1", "localhost/iso:1")


def _leftovers(box: Isobox) -> tuple[str, list[str], list[str]]:
    def names(path: Path) -> list[str]:
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    return box.cli("ps", "-aq", check=True).stdout, names(box.root / "containers"), names(box.run_root / "v")


def test_firmware_flag_is_refused_where_it_cannot_apply(isobox: Isobox) -> None:
    before = _leftovers(isobox)
    cases = [
        (["--firmware", "uefi", "busybox", "true"], "--firmware is for --isolation vm, not container"),
        (["--firmware", "uefi", "--isolation", "gvisor", "busybox", "true"], "--firmware is for --isolation vm"),
        (["--firmware", "uefi", "--isolation", "vm", "busybox", "true"], "--firmware is for VM disk images"),
        (["--firmware", "efi", "--isolation", "vm", "busybox", "true"], "invalid firmware 'efi'"),
    ]
    for args, message in cases:
        for verb in (["run", "--rm"], ["run", "-d"], ["create"]):
            done = isobox.cli(*verb, "--network", "none", *args)
            assert done.returncode == 125, (verb, args, done.stderr)
            assert message in done.stderr
    assert _leftovers(isobox) == before


def test_flags_for_an_isobox_init_are_refused_for_a_disk_image(isobox: Isobox, tmp_path: Path) -> None:
    blank = tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    isobox.cli("image", "import-disk", "-q", str(blank), "--name", "localhost/os:1", check=True)
    before = _leftovers(isobox)
    try:
        for args, flag in ((["localhost/os:1", "echo", "hi"], "a command"), (["-e", "A=1", "localhost/os:1"], "-e"),
                           (["-v", f"{tmp_path}:/mnt", "localhost/os:1"], "-v"), (["-t", "localhost/os:1"], "-t")):
            done = isobox.cli("create", *VM, *args)
            assert done.returncode == 125 and f"{flag} does not apply" in done.stderr, done.stderr
        assert _leftovers(isobox) == before
    finally:
        isobox.cli("image", "rm", "-f", "localhost/os:1")

