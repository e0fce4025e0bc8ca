"""The QEMU command line, built in small steps: one function per device or concern.

A microVM is QEMU's ``microvm`` machine: no PCI, no firmware tables beyond ACPI, no option ROMs,
no PIC/PIT/RTC; virtio-mmio devices only, plus the one 16550 UART the kernel console writes to
(so that a panic before the virtio modules load is still visible).  QEMU runs under its own
seccomp sandbox with the options libvirt uses.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from isobox.runtimes.vm.accel import TB_SIZE_MIB

QEMU = "qemu-system-x86_64"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# Every port costs the guest ~90 ms of boot under TCG, so there are two: the workload's relay
# (stdio, signals, exit code in one framed stream: relay.py) and the guest agent's.  exec -t's
# are hot-plugged per session (ptyexec.py) into this bus; port 0 is reserved (a virtconsole's).
IO_PORT = "io"
AGENT_PORT = "org.qemu.guest_agent.0"
SERIAL_BUS = "vser.0"
MAX_PORTS = 12
# Every socket QEMU or the monitor makes in the run dir ("tty": `isobox console`'s listener).
SOCKETS = ("attach", "tty", "console", IO_PORT, "qga", "qmp")
# panic=-1 + -no-reboot: a panic ends QEMU at once, and the monitor reports the console's tail.
KERNEL_ARGS = ("console=ttyS0", "quiet", "panic=-1", "reboot=t", "tsc=reliable", "8250.nr_uarts=1")


@dataclass
class VmConfig:
    run_dir: Path
    kernel: Path
    initramfs: Path
    root_disk: Path
    spec_disk: Path
    accel: str  # "kvm" | "tcg"
    memory_mib: int = 512
    cpus: int = 1
    machine: str = "microvm"
    name: str = "isobox"
    extra_kernel_args: list[str] = field(default_factory=list)
    volumes: int = 0  # virtio-fs shares, served by the monitor's virtiofsd processes (fs<N>.sock)
    nic: tuple[str, str] | None = None  # (tap device, guest MAC) on an isobox network
    tb_size_mib: int = TB_SIZE_MIB  # TCG's translation cache cap (accel.py)
    tools_disk: Path | None = None  # qemu-ga and its libraries (guest.py), shared read-only by every VM

    def socket(self, name: str) -> Path:
        return self.run_dir / f"{name}.sock"


def base(cfg: VmConfig) -> list[str]:
    return [QEMU, "-name", cfg.name, "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-sandbox", SANDBOX]


def machine(cfg: VmConfig) -> list[str]:
    opts = "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=on"
    if cfg.volumes:
        opts += ",memory-backend=mem"  # vhost-user (virtiofsd) needs guest RAM it can map
    # microvm's virtio-mmio transport defaults to legacy (v1); vhost-user-fs needs virtio 1.0.
    return ["-machine", opts, "-global", "virtio-mmio.force-legacy=false"]


def accelerator(cfg: VmConfig) -> list[str]:
    return accelerator_args(cfg.accel, cfg.tb_size_mib)


def accelerator_args(accel: str, tb_size_mib: int) -> list[str]:
    """Shared by microVMs and firmware boots (firmware.py)."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={tb_size_mib}", "-cpu", "max"]


def resources(cfg: VmConfig) -> list[str]:
    out = ["-m", f"{cfg.memory_mib}M", "-smp", str(cfg.cpus)]
    if cfg.volumes:
        out += ["-object", f"memory-backend-memfd,id=mem,size={cfg.memory_mib}M,share=on"]
    return out


def kernel(cfg: VmConfig) -> list[str]:
    args = " ".join(a for a in (*KERNEL_ARGS, *cfg.extra_kernel_args) if a)
    return ["-kernel", str(cfg.kernel), "-initrd", str(cfg.initramfs), "-append", args]


def _socket_chardev(cfg: VmConfig, name: str) -> list[str]:
    return ["-chardev", f"socket,id={name},path={cfg.socket(name)},server=on,wait=off"]


def console(cfg: VmConfig) -> list[str]:
    return [*_socket_chardev(cfg, "console"), "-serial", "chardev:console"]


def serial_ports(cfg: VmConfig) -> list[str]:
    names = (IO_PORT, "qga")
    out = ["-device", f"virtio-serial-device,id={SERIAL_BUS.split('.')[0]},max_ports={MAX_PORTS}"]
    for name in names:
        port = AGENT_PORT if name == "qga" else name
        out += [*_socket_chardev(cfg, name), "-device", f"virtserialport,chardev={name},name={port}"]
    return out


def disks(cfg: VmConfig) -> list[str]:
    return [
        "-drive", f"id=root,file={cfg.root_disk},format=qcow2,if=none,discard=unmap,cache=writeback",
        "-device", "virtio-blk-device,drive=root,serial=isobox-root",
        "-drive", f"id=spec,file={cfg.spec_disk},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=spec,serial=isobox-spec",
    ] + ([] if cfg.tools_disk is None else [
        "-drive", f"id=tools,file={cfg.tools_disk},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=tools,serial=isobox-tools",
    ])


def volumes(cfg: VmConfig) -> list[str]:
    out = []
    for i in range(cfg.volumes):
        out += ["-chardev", f"socket,id=fs{i},path={cfg.socket(f'fs{i}')}",
                "-device", f"vhost-user-fs-device,chardev=fs{i},tag=vol{i}"]
    return out


def nic(tap_and_mac: tuple[str, str] | None, device: str) -> list[str]:
    """A virtio NIC on the tap isobox made in the network's bridge (no helper scripts: QEMU's
    sandbox forbids spawning, and the tap is already plugged in)."""
    if tap_and_mac is None:
        return []
    tap, mac = tap_and_mac
    return ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
            "-device", f"{device},netdev=net0,mac={mac}"]


def network(cfg: VmConfig) -> list[str]:
    return nic(cfg.nic, "virtio-net-device")  # virtio-mmio: microvm has no PCI


def qmp(cfg: VmConfig) -> list[str]:
    return ["-qmp", f"unix:{cfg.socket('qmp')},server=on,wait=off"]


def qemu_cmdline(cfg: VmConfig) -> list[str]:
    return [*base(cfg), *machine(cfg), *accelerator(cfg), *resources(cfg), *kernel(cfg),
            *console(cfg), *serial_ports(cfg), *disks(cfg), *volumes(cfg), *network(cfg), *qmp(cfg)]


def render(argv: list[str]) -> str:
    return shlex.join(argv)
