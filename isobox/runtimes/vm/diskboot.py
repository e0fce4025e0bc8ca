"""The VM level for VM disk images (``image import-disk``, ``image build debian:SUITE --bootable``):
the disk's own OS boots through firmware on q35 (command line: ``firmware.py``).

``VmRuntime`` hands disk images here.  Per VM, in the data dir: ``root.qcow2``, an overlay over
the stored disk (for an ISO: a blank disk to install onto, the ISO itself attached read-only),
and for UEFI ``OVMF_VARS.fd``, the VM's own variable store (kept across restarts, as libvirt
keeps its nvram).  The monitor runs QEMU in its firmware mode (``monitor.py``).

The workload is the whole OS, so the flags that shape a process inside an isobox init —
a command, ``-e``, ``-w``, ``-u``, ``--hostname``, ``-v``, ``-t``, ``--read-only``, ``--init`` —
are refused rather than silently ignored.  ``exec`` goes to the guest's qemu-ga, when the OS
runs one, as the agent's user (root on Linux).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isobox.errors import InvalidArgument, RuntimeFailure
from isobox.images import vmdisk
from isobox.images.store import Image
from isobox.runtimes.base import ExecRequest, Launched
from isobox.runtimes.vm import accel as accels
from isobox.runtimes.vm import firmware, qemu
from isobox.runtimes.vm.monitor import MonitorConfig
from isobox.runtimes.vm.runtime import VmRuntime, data_dir, exit_path, memory_mib, run_dir, vcpus
from isobox.spec import WorkloadSpec
from isobox.state import ContainerRecord

if TYPE_CHECKING:
    from isobox.net.manager import Attachment

BLANK_DISK = "16G"  # an ISO's install target: a sparse qcow2, costs only what the guest writes
MACHINE_TIMEOUT = {"kvm": 30.0, "tcg": 60.0}  # QEMU building the machine, not the OS booting
HINT_OVMF = "apt-get install ovmf (or run scripts/setup.sh)"
NOT_FOR_DISKS = (  # (spec attribute, flag) that only an isobox init could apply
    ("command", "a command"), ("entrypoint", "--entrypoint"), ("env", "-e"), ("workdir", "-w"),
    ("user", "-u"), ("hostname", "--hostname"), ("mounts", "-v"), ("tty", "-t"),
    ("read_only", "--read-only"), ("init", "--init"),
)


def disk_file(image: Image) -> Path:
    """The image's stored disk (a qcow2, or an ISO), as the image store placed it."""
    assert image.disk_file is not None
    return image.disk_file


def is_iso(image: Image) -> bool:
    return (image.disk or {}).get("kind") == "iso"


def chosen_firmware(spec: WorkloadSpec) -> str:
    return spec.firmware or "bios"


def validate(spec: WorkloadSpec, image: Image) -> None:
    for attribute, flag in NOT_FOR_DISKS:
        if getattr(spec, attribute):
            raise InvalidArgument(f"image {spec.image} boots its own OS through firmware: {flag} does not apply",
                                  hint="run it without; use `isobox exec` (qemu-ga) or `isobox console` inside")
    if chosen_firmware(spec) == "uefi" and firmware.find_ovmf() is None:
        raise InvalidArgument("--firmware uefi needs OVMF (UEFI firmware for QEMU)", hint=HINT_OVMF)
    if not disk_file(image).is_file():
        raise InvalidArgument(f"image {spec.image}: its disk file is missing from the store",
                              hint="remove the image and import or build it again")


def _prepare_disks(image: Image, ddir: Path) -> tuple[Path, Path | None]:
    """(the overlay the VM writes, the ISO attached read-only or None)."""
    overlay = ddir / "root.qcow2"
    stored = disk_file(image)
    if overlay.exists():  # a restart keeps what the OS wrote
        return overlay, stored if is_iso(image) else None
    if is_iso(image):
        vmdisk.create_blank(overlay, BLANK_DISK)
        return overlay, stored
    vmdisk.create_overlay(stored, overlay, backing_format="qcow2")
    return overlay, None


VARS_STORE = "OVMF_VARS.qcow2"


def vars_store(ddir: Path) -> Path | None:
    """The VM's UEFI variable store, when it has one (``snapshots`` takes it along)."""
    path = ddir / VARS_STORE
    return path if path.exists() else None


def _vars_store(ddir: Path, ovmf: firmware.Ovmf) -> Path:
    """A qcow2 copy of OVMF's template: QEMU's savevm needs every writable drive to take
    internal snapshots, which a raw flash image cannot (a VM made before this keeps its .fd)."""
    legacy = ddir / "OVMF_VARS.fd"
    if legacy.exists():
        return legacy
    path = ddir / VARS_STORE
    if not path.exists():
        vmdisk.convert_to_qcow2(ovmf.vars_template, path)
    return path


def start(rec: ContainerRecord, spec: WorkloadSpec, image: Image, attach: bool,
          network: Attachment | None = None) -> tuple[Launched, dict[str, Any], str | None]:
    chosen = accels.choose()
    kind = chosen_firmware(spec)
    ovmf = firmware.find_ovmf() if kind == "uefi" else None
    if kind == "uefi" and ovmf is None:
        raise RuntimeFailure("--firmware uefi needs OVMF (UEFI firmware for QEMU)", hint=HINT_OVMF)
    rdir, ddir = run_dir(rec.id), data_dir(rec.id)
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True, mode=0o700)
    ddir.mkdir(parents=True, exist_ok=True, mode=0o700)
    overlay, cdrom = _prepare_disks(image, ddir)
    cfg = firmware.FirmwareConfig(run_dir=rdir, disk=overlay, accel=chosen.name, firmware=kind,
                                  tb_size_mib=chosen.tb_size_mib, ovmf_code=ovmf.code if ovmf else None,
                                  ovmf_vars=_vars_store(ddir, ovmf) if ovmf else None, cdrom=cdrom,
                                  memory_mib=memory_mib(spec), cpus=vcpus(spec), name=f"isobox-{rec.id[:12]}",
                                  nic=None if network is None else (network.lease.link, network.lease.mac))
    argv = firmware.qemu_cmdline(cfg)
    timeout = MACHINE_TIMEOUT[chosen.name]
    mcfg = MonitorConfig(argv=argv, run_dir=str(rdir), log_path=str(ddir / "ctr.log"),
                         console_log=str(ddir / "console.log"), exit_path=str(exit_path(rec.id)),
                         wait_attach=attach, boot_timeout=timeout, firmware=True)
    mcfg.save(rdir / "monitor.json")
    try:
        launched = VmRuntime._spawn_monitor(rdir, timeout + 20, argv)
    except BaseException:
        shutil.rmtree(rdir, ignore_errors=True)
        raise
    warnings = [w for w in (chosen.warning,) if w]
    applied = {
        "Accelerator": chosen.name,
        "AcceleratorWarning": chosen.warning,
        "Machine": firmware.MACHINE,
        "Firmware": {"Type": kind, "Code": str(ovmf.code) if ovmf else firmware.SEABIOS,
                     "Vars": str(cfg.ovmf_vars) if cfg.ovmf_vars else None},
        "Boot": "cdrom" if cdrom else "disk",
        "MemoryMiB": cfg.memory_mib,
        "VCPUs": cfg.cpus,
        "RootDisk": {"base": None if cdrom else str(disk_file(image)), "overlay": str(overlay),
                     "cdrom": str(cdrom) if cdrom else None},
        "QemuPid": launched.pid,
        "QemuCommandLine": qemu.render(argv),
        "QmpSocket": str(cfg.socket("qmp")),
        "ConsoleLog": str(ddir / "console.log"),
        "Sandbox": qemu.SANDBOX,
        "CgroupWarnings": warnings,
        "NetworkDevice": None if network is None else {"tap": network.lease.link, "model": "virtio-net-pci",
                                                       "config": "DHCP (the network's dnsmasq, static lease)"},
    }
    return launched, applied, str(rdir / "attach.sock") if attach else None


def exec_argv(request: ExecRequest) -> list[str]:
    """What qemu-ga runs (it searches PATH); ``-e`` through env(1), which every Linux guest has."""
    if request.workdir or request.user:
        raise InvalidArgument("exec in a firmware-booted VM runs as the guest agent's user in its directory: "
                              "-w and -u do not apply", hint="e.g. isobox exec VM sh -c 'cd /srv && su app -c ...'")
    if not request.command:
        raise InvalidArgument("exec needs a command")
    if request.env:
        return ["env", "--", *(f"{k}={v}" for k, v in request.env.items()), *request.command]
    return list(request.command)
