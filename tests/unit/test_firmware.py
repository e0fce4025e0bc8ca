"""Firmware boots' pure parts: the q35 command line, OVMF discovery, the bootable disk's layout
and configuration, the spec's ``firmware`` field, exec through the guest agent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from isobox.cli.main import parse
from isobox.cli.runspec import spec_from_args
from isobox.errors import InvalidArgument
from isobox.images import bootdisk
from isobox.runtimes.base import ExecRequest
from isobox.runtimes.vm import accel, diskboot, firmware, monitor, qemu
from isobox.runtimes.vm.monitor import MonitorConfig
from isobox.spec import Isolation, WorkloadSpec


def _cfg(tmp_path: Path, **changes: object) -> firmware.FirmwareConfig:
    cfg = firmware.FirmwareConfig(run_dir=tmp_path, disk=tmp_path / "root.qcow2", accel="tcg",
                                  memory_mib=1024, cpus=2, name="isobox-abc")
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def _value(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


# -- the command line ------------------------------------------------------------------------------

def test_bios_boot_is_a_sandboxed_q35_with_a_virtio_disk(tmp_path: Path) -> None:
    argv = firmware.qemu_cmdline(_cfg(tmp_path))
    assert argv[0] == qemu.QEMU
    assert _value(argv, "-machine") == ["q35,graphics=off"]
    assert _value(argv, "-sandbox") == [qemu.SANDBOX]
    assert "-nodefaults" in argv and "-no-user-config" in argv
    assert _value(argv, "-m") == ["1024M"] and _value(argv, "-smp") == ["2"]
    assert _value(argv, "-accel") == [f"tcg,tb-size={accel.TB_SIZE_MIB}"] and _value(argv, "-cpu") == ["max"]
    # SeaBIOS is q35's default: no firmware flags; isobox's kernel is not involved at all
    assert not any(a.startswith("if=pflash") for a in argv)
    assert not {"-kernel", "-initrd", "-append", "-bios", "-no-reboot"} & set(argv)
    assert _value(argv, "-drive") == [f"id=root,file={tmp_path}/root.qcow2,format=qcow2,if=none,"
                                      "discard=unmap,cache=writeback"]
    assert "virtio-blk-pci,drive=root,serial=isobox-root,bootindex=1" in _value(argv, "-device")
    # the same sockets a microVM has, so logs, console, exec and stop work the same way
    chardevs = _value(argv, "-chardev")
    assert f"socket,id=console,path={tmp_path}/console.sock,server=on,wait=off" in chardevs
    assert f"socket,id=qga,path={tmp_path}/qga.sock,server=on,wait=off" in chardevs
    assert _value(argv, "-serial") == ["chardev:console"]
    assert f"virtserialport,bus=vser0.0,chardev=qga,name={qemu.AGENT_PORT}" in _value(argv, "-device")
    assert _value(argv, "-qmp") == [f"unix:{tmp_path}/qmp.sock,server=on,wait=off"]


def test_uefi_boot_maps_read_only_code_and_the_vms_own_variables(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, firmware="uefi", ovmf_code=Path("/fw/CODE.fd"), ovmf_vars=tmp_path / "OVMF_VARS.qcow2")
    drives = _value(firmware.qemu_cmdline(cfg), "-drive")
    # the root disk first: savevm keeps the memory state in the first drive that takes snapshots
    assert drives[0].startswith("id=root,")
    assert drives[1:] == ["if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
                          f"if=pflash,format=qcow2,unit=1,file={tmp_path}/OVMF_VARS.qcow2"]
    legacy = _cfg(tmp_path, firmware="uefi", ovmf_code=Path("/fw/CODE.fd"), ovmf_vars=tmp_path / "OVMF_VARS.fd")
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/OVMF_VARS.fd" in _value(firmware.qemu_cmdline(legacy), "-drive")
    with pytest.raises(ValueError, match="OVMF"):
        firmware.qemu_cmdline(_cfg(tmp_path, firmware="uefi"))


def test_an_iso_is_a_read_only_cdrom_tried_after_the_disk(tmp_path: Path) -> None:
    argv = firmware.qemu_cmdline(_cfg(tmp_path, cdrom=Path("/store/blob")))
    assert "id=cd,file=/store/blob,format=raw,if=none,media=cdrom,readonly=on" in _value(argv, "-drive")
    devices = _value(argv, "-device")
    assert "ide-cd,drive=cd,bus=ide.0,bootindex=2" in devices
    assert "virtio-blk-pci,drive=root,serial=isobox-root,bootindex=1" in devices


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = firmware.qemu_cmdline(_cfg(tmp_path, accel="kvm"))
    assert _value(argv, "-accel") == ["kvm"] and _value(argv, "-cpu") == ["host"]


# -- OVMF discovery --------------------------------------------------------------------------------

def _descriptor(directory: Path, name: str, code: Path, template: Path, features: list[str],
                machines: tuple[str, ...] = ("pc-i440fx-*", "pc-q35-*")) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for path in (code, template):
        path.write_bytes(b"fw")
    (directory / name).write_text(json.dumps({
        "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": str(code), "format": "raw"},
                    "nvram-template": {"filename": str(template), "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": list(machines)}],
        "features": features}))


def test_ovmf_is_found_by_qemus_firmware_descriptors(tmp_path: Path) -> None:
    usr, etc = tmp_path / "usr", tmp_path / "etc"
    _descriptor(usr, "40-secure.json", tmp_path / "S_CODE", tmp_path / "S_VARS", ["secure-boot", "requires-smm"])
    _descriptor(usr, "50-i440fx.json", tmp_path / "I_CODE", tmp_path / "I_VARS", [], ("pc-i440fx-*",))
    _descriptor(usr, "55-gone.json", tmp_path / "missing", tmp_path / "G_VARS", [])
    (tmp_path / "missing").unlink()
    _descriptor(usr, "60-plain.json", tmp_path / "P_CODE", tmp_path / "P_VARS", ["acpi-s3", "amd-sev"])
    (usr / "70-broken.json").write_text("{not json")
    found = firmware.find_ovmf((str(etc), str(usr)))
    assert found == firmware.Ovmf(tmp_path / "P_CODE", tmp_path / "P_VARS")
    # a file of the same name under /etc replaces the packaged one
    _descriptor(etc, "60-plain.json", tmp_path / "E_CODE", tmp_path / "E_VARS", [])
    assert firmware.find_ovmf((str(etc), str(usr))) == firmware.Ovmf(tmp_path / "E_CODE", tmp_path / "E_VARS")


def test_this_hosts_ovmf_is_debians_without_secure_boot() -> None:
    found = firmware.find_ovmf()
    assert found is not None, "ovmf is missing: scripts/setup.sh installs it"
    assert found.code.is_file() and found.vars_template.is_file()
    assert "secboot" not in found.code.name and "ms" not in found.vars_template.name.split(".")


# -- the spec and the CLI --------------------------------------------------------------------------

def test_firmware_is_a_vm_only_spec_field() -> None:
    spec = WorkloadSpec(image="disk", isolation=Isolation.VM, firmware="uefi").validate()
    assert WorkloadSpec.from_dict(spec.to_dict()).firmware == "uefi"
    with pytest.raises(InvalidArgument, match="--firmware is for --isolation vm, not container"):
        WorkloadSpec(image="disk", firmware="uefi").validate()
    with pytest.raises(InvalidArgument, match="invalid firmware 'efi'"):
        WorkloadSpec(image="disk", isolation=Isolation.VM, firmware="efi").validate()


def test_firmware_flag() -> None:
    spec = spec_from_args(parse(["run", "--isolation", "vm", "--firmware", "uefi", "disk"]), {})
    assert spec.firmware == "uefi" and spec.command == []
    assert spec_from_args(parse(["run", "--isolation", "vm", "disk"]), {}).firmware is None
    with pytest.raises(InvalidArgument, match="--firmware is for --isolation vm"):
        spec_from_args(parse(["create", "--firmware", "bios", "disk"]), {})


def test_exec_runs_the_command_through_the_agent() -> None:
    def request(command: list[str], env: dict[str, str] | None = None, workdir: str | None = None,
                user: str | None = None) -> ExecRequest:
        return ExecRequest(command, env or {}, workdir, user, False, False, False)

    assert diskboot.exec_argv(request(["uname", "-r"])) == ["uname", "-r"]
    assert diskboot.exec_argv(request(["sh", "-c", "echo $A"], {"A": "x y", "-B": "1"})) == \
        ["env", "--", "A=x y", "-B=1", "sh", "-c", "echo $A"]
    for bad in (request(["ls"], workdir="/srv"), request(["ls"], user="1000")):
        with pytest.raises(InvalidArgument, match="-w and -u do not apply"):
            diskboot.exec_argv(bad)


# -- the bootable Debian disk ----------------------------------------------------------------------

def test_partition_table_is_a_boot_fat_then_the_root(tmp_path: Path) -> None:
    script = bootdisk.partition_table()
    assert script.splitlines() == [
        "label: dos",
        "start=2048, size=262144, type=ef, bootable",
        f"start={(1 + 128) * 2048}, size={(bootdisk.DISK_SIZE - bootdisk.ROOT_START) // 512}, type=83",
    ]


def test_syslinux_config_boots_the_root_by_uuid_on_the_serial_console() -> None:
    cfg = bootdisk.syslinux_cfg("1234-uuid")
    lines = [line.strip() for line in cfg.splitlines()]
    assert lines[0] == "SERIAL 0 115200"  # SYSLINUX itself on COM1
    assert {"PROMPT 0", "TIMEOUT 0", "DEFAULT debian", "LINUX /vmlinuz", "INITRD /initrd.img"} <= set(lines)
    assert "APPEND root=UUID=1234-uuid ro console=ttyS0,115200" in lines


def test_configure_locks_root_and_names_the_host(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n")
    bootdisk.configure(tmp_path, "u-u-i-d")
    assert (etc / "shadow").read_text().splitlines() == ["root:!*:20000:0:99999:7:::", "daemon:*:20000:0:99999:7:::"]
    bootdisk.lock_root_password(etc / "shadow")  # idempotent
    assert (etc / "shadow").read_text().startswith("root:!*:")
    assert (etc / "hostname").read_text() == "debian\n"
    assert (etc / "fstab").read_text().splitlines() == [
        "UUID=u-u-i-d\t/\text4\terrors=remount-ro\t0\t1",
        "LABEL=ISOBOXBOOT\t/boot/firmware\tvfat\tumask=0077,nofail\t0\t2"]  # the FAT that boots
    assert (tmp_path / "boot" / "firmware").is_dir()
    for hooks in ("kernel/postinst.d", "initramfs/post-update.d"):  # run by the kernel package, update-initramfs
        hook = etc / hooks / "zz-isobox-boot"
        assert hook.read_text() == bootdisk.BOOT_HOOK and hook.stat().st_mode & 0o777 == 0o755
    assert "127.0.1.1\tdebian" in (etc / "hosts").read_text()


def test_build_key_covers_the_inputs() -> None:
    base = bootdisk.build_key("bookworm", [])
    assert base == bootdisk.build_key("bookworm", [])
    assert len({base, bootdisk.build_key("trixie", []), bootdisk.build_key("bookworm", ["openssh-server"]),
                bootdisk.build_key("bookworm", [], mirror="http://mirror.example/debian")}) == 4
    assert bootdisk.default_tag("bookworm", [], base) == "debian:bookworm-bootable"
    assert bootdisk.default_tag("bookworm", ["vim"], base) == f"debian:bookworm-bootable-{base[:8]}"


# -- the monitor in firmware mode, against the real QEMU ---------------------------------------------
# (its console logging and the ACPI power button are covered by tests/integration/test_firmware_boot.py)


def test_firmware_monitor_reports_a_qemu_that_cannot_build_the_machine(tmp_path: Path) -> None:
    missing = tmp_path / "CODE.fd"  # QEMU refuses to start without its firmware flash
    cfg = _cfg(tmp_path, firmware="uefi", ovmf_code=missing, ovmf_vars=tmp_path / "VARS.fd")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(cfg.disk), "64M"], check=True)  # opened first
    mcfg = MonitorConfig(argv=firmware.qemu_cmdline(cfg), run_dir=str(tmp_path), log_path=str(tmp_path / "ctr.log"),
                         console_log=str(tmp_path / "console.log"), exit_path=str(tmp_path / "exit.json"),
                         wait_attach=False, boot_timeout=20, firmware=True)
    r, w = os.pipe()
    monitor.run(mcfg, w)
    os.close(w)
    status = json.loads(os.read(r, 65536))
    os.close(r)
    assert "QEMU stopped while building the machine" in status["error"]
    assert str(missing) in status["error"]
