"""The QEMU command line of a firmware boot: any OS from a VM disk image, on the ``q35`` machine.

Where ``qemu.py`` boots isobox's own kernel on a ``microvm``, this boots what an imported disk
(or ISO) holds through firmware, as libvirt does: SeaBIOS (QEMU's default ``bios-256k.bin`` on
q35) or, with ``--firmware uefi``, Debian's OVMF as two pflash devices — the code read-only,
the variable store a per-VM copy of its template (UEFI writes boot entries there).  The disk is
a per-VM qcow2 overlay as a virtio-blk-pci device; an ISO is a read-only CD-ROM on q35's AHCI,
after a blank overlay disk to install onto (disk first: an empty disk falls through to the CD,
and an installed system boots from the disk).  The serial console (SeaBIOS writes there too, see
``machine``), QMP and the qemu-guest-agent port use the same sockets as a microVM, and QEMU runs
under the same ``-sandbox``.  No ``-no-reboot``: a full OS that reboots should come back, as on
real hardware.

One function per device or concern, like ``qemu.py``.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from isobox.runtimes.vm import qemu
from isobox.runtimes.vm.accel import TB_SIZE_MIB

MACHINE = "q35"
FIRMWARES = ("bios", "uefi")
SEABIOS = "SeaBIOS (QEMU's bios-256k.bin)"
# QEMU's firmware descriptors (docs/interop/firmware.json); Debian's ovmf installs them here.
DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")
# Used when no descriptor matches: Debian's 4 MiB build without Secure Boot (60-edk2-x86_64.json).
OVMF_FALLBACK = (("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
                 ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"))


@dataclass(frozen=True)
class Ovmf:
    code: Path           # read-only executable flash
    vars_template: Path  # copied per VM


@dataclass
class FirmwareConfig:
    run_dir: Path
    disk: Path                 # the per-VM qcow2 overlay (writable)
    accel: str                 # "kvm" | "tcg"
    firmware: str = "bios"     # "bios" | "uefi"
    ovmf_code: Path | None = None
    ovmf_vars: Path | None = None  # the per-VM copy of the variable store
    cdrom: Path | None = None  # an ISO image, attached read-only
    memory_mib: int = 512
    cpus: int = 1
    name: str = "isobox"
    nic: tuple[str, str] | None = None  # (tap device, guest MAC): the guest takes its address by DHCP
    tb_size_mib: int = TB_SIZE_MIB  # TCG's translation cache cap (accel.py)

    def socket(self, name: str) -> Path:
        return self.run_dir / f"{name}.sock"


def find_ovmf(descriptor_dirs: tuple[str, ...] = DESCRIPTOR_DIRS) -> Ovmf | None:
    """UEFI firmware for x86_64 q35 without Secure Boot or SMM (isobox enrolls no keys), by QEMU's
    firmware descriptors in priority order (file name, /etc before /usr/share), else Debian's paths."""
    by_name: dict[str, str] = {}
    for directory in reversed(descriptor_dirs):
        for path in glob.glob(os.path.join(directory, "*.json")):
            by_name[os.path.basename(path)] = path  # /etc overrides /usr/share of the same name
    for name in sorted(by_name):
        found = _usable_descriptor(by_name[name])
        if found is not None:
            return found
    for code, template in OVMF_FALLBACK:
        if os.path.isfile(code) and os.path.isfile(template):
            return Ovmf(Path(code), Path(template))
    return None


def _usable_descriptor(path: str) -> Ovmf | None:
    try:
        with open(path, encoding="utf-8") as fh:
            desc = json.load(fh)
        mapping = desc["mapping"]
        features = set(desc.get("features") or ())
        machines = [m for t in desc.get("targets") or () if t.get("architecture") == "x86_64"
                    for m in t.get("machines") or ()]
        if ("uefi" not in desc.get("interface-types", ()) or mapping.get("device") != "flash"
                or features & {"secure-boot", "requires-smm", "enrolled-keys", "amd-sev-es", "intel-tdx"}
                or not any(m.startswith("pc-q35") for m in machines)):
            return None
        code, template = Path(mapping["executable"]["filename"]), Path(mapping["nvram-template"]["filename"])
        if mapping["executable"].get("format", "raw") != "raw" or mapping["nvram-template"].get("format", "raw") != "raw":
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Ovmf(code, template) if code.is_file() and template.is_file() else None


def base(cfg: FirmwareConfig) -> list[str]:
    return [qemu.QEMU, "-name", cfg.name, "-nodefaults", "-no-user-config", "-display", "none",
            "-sandbox", qemu.SANDBOX]


def machine(cfg: FirmwareConfig) -> list[str]:
    """``graphics=off``: there is no display, so QEMU points SeaBIOS at the serial port (its
    "sercon"), and its banner, boot attempts and "No bootable device." reach the console."""
    return ["-machine", f"{MACHINE},graphics=off"]


def accelerator(cfg: FirmwareConfig) -> list[str]:
    return qemu.accelerator_args(cfg.accel, cfg.tb_size_mib)


def resources(cfg: FirmwareConfig) -> list[str]:
    return ["-m", f"{cfg.memory_mib}M", "-smp", str(cfg.cpus)]


def firmware(cfg: FirmwareConfig) -> list[str]:
    """Nothing for SeaBIOS (q35's default); OVMF as pflash units 0 (code) and 1 (variables)."""
    if cfg.firmware == "bios":
        return []
    if cfg.ovmf_code is None or cfg.ovmf_vars is None:
        raise ValueError("UEFI boot needs the OVMF code and a variable store")
    fmt = "qcow2" if cfg.ovmf_vars.suffix == ".qcow2" else "raw"
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={cfg.ovmf_code}",
            "-drive", f"if=pflash,format={fmt},unit=1,file={cfg.ovmf_vars}"]


def _socket_chardev(cfg: FirmwareConfig, name: str) -> list[str]:
    return ["-chardev", f"socket,id={name},path={cfg.socket(name)},server=on,wait=off"]


def console(cfg: FirmwareConfig) -> list[str]:
    """COM1 (the 16550 at 0x3f8 every x86 OS and both firmwares know) on the console socket."""
    return [*_socket_chardev(cfg, "console"), "-serial", "chardev:console"]


def agent_port(cfg: FirmwareConfig) -> list[str]:
    """The qemu-guest-agent channel, by the name the guest's udev rule starts qemu-ga on."""
    return ["-device", "virtio-serial-pci,id=vser0", *_socket_chardev(cfg, "qga"),
            "-device", f"virtserialport,bus=vser0.0,chardev=qga,name={qemu.AGENT_PORT}"]


def disks(cfg: FirmwareConfig) -> list[str]:
    out = ["-drive", f"id=root,file={cfg.disk},format=qcow2,if=none,discard=unmap,cache=writeback",
           "-device", "virtio-blk-pci,drive=root,serial=isobox-root,bootindex=1"]
    if cfg.cdrom is not None:
        out += ["-drive", f"id=cd,file={cfg.cdrom},format=raw,if=none,media=cdrom,readonly=on",
                "-device", "ide-cd,drive=cd,bus=ide.0,bootindex=2"]
    return out


def qmp(cfg: FirmwareConfig) -> list[str]:
    return ["-qmp", f"unix:{cfg.socket('qmp')},server=on,wait=off"]


def qemu_cmdline(cfg: FirmwareConfig) -> list[str]:
    # The disks before the firmware's flash: savevm puts the memory state in the first drive
    # that takes snapshots, and that should be the root disk (``snapshot ls`` reads it there).
    return [*base(cfg), *machine(cfg), *accelerator(cfg), *resources(cfg), *disks(cfg), *firmware(cfg),
            *console(cfg), *agent_port(cfg), *qemu.nic(cfg.nic, "virtio-net-pci"), *qmp(cfg)]
