"""Which accelerator a VM gets: KVM where it boots stock kernels, else TCG with a warning.

PVM hosts (``/sys/module/kvm_pvm``, e.g. this CI) expose a /dev/kvm that only runs PVM-enabled
guest kernels; a stock kernel dies with "KVM internal error".  ``sysinfo.accelerator()`` knows
that; here the user may still opt in to KVM with a PVM-capable kernel of their own
(``ISOBOX_VM_KERNEL`` + ``ISOBOX_VM_ACCEL=kvm``).

Under TCG, QEMU's translation cache is capped (``tb-size``; QEMU's own default grows to 1 GiB).
The cap bounds more than the generated code: QEMU's index of the translated blocks and its
per-page records grow with the cache on QEMU's heap, and a full cache empties all of them.  So
the cap trades speed for memory, and ``ISOBOX_VM_TB_SIZE`` (MiB, in the daemon's environment)
lets the user choose.  Measured here (BENCHMARKS.md, VM boot): 16 MiB against the default 64
takes ~33 MiB off an idle busybox VM's QEMU, but a dpkg/apt/perl workload runs ~25% longer end
to end and a full Debian boots to login 2.3x slower, as the cache keeps refilling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from isobox.errors import InvalidArgument

TB_SIZE_MIB = 64


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" | "tcg"
    warning: str | None
    tb_size_mib: int = TB_SIZE_MIB  # TCG's translation cache cap (unused under KVM)


def tb_size_mib() -> int:
    raw = os.environ.get("ISOBOX_VM_TB_SIZE", "")
    if not raw:
        return TB_SIZE_MIB
    if not raw.isdigit() or not 1 <= int(raw) <= 4096:
        raise InvalidArgument(f"ISOBOX_VM_TB_SIZE={raw!r}: expected a whole number of MiB from 1 to 4096")
    return int(raw)


def choose() -> Accel:
    from isobox import sysinfo

    tb = tb_size_mib()  # a bad setting fails every VM start before anything is made
    forced = os.environ.get("ISOBOX_VM_ACCEL", "").lower()
    if forced in ("kvm", "tcg"):
        return Accel(forced, None if forced == "kvm" else "TCG forced by ISOBOX_VM_ACCEL: VMs run slowly", tb)
    name, why = sysinfo.accelerator()
    if name == "kvm":
        return Accel("kvm", None)
    return Accel("tcg", f"KVM is not usable for stock guest kernels ({why}); this VM runs under TCG "
                        "emulation, 10-50x slower", tb)


def tsc_khz() -> int | None:
    """The host TSC frequency: under TCG the guest reads the host's TSC, and without a PIT or
    HPET to calibrate against (microvm) the kernel must be told (``tsc_early_khz``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None
