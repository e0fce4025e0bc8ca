"""Which accelerator a VM gets: KVM where it boots stock kernels, else TCG with a warning.

PVM hosts (``/sys/module/kvm_pvm``, e.g. this CI) expose a /dev/kvm that only runs PVM-enabled
guest kernels; a stock kernel dies with "KVM internal error".  ``sysinfo.accelerator()`` knows
that; here the user may still opt in to KVM with a PVM-capable kernel of their own
(``ISOBOX_VM_KERNEL`` + ``ISOBOX_VM_ACCEL=kvm``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" | "tcg"
    warning: str | None


def choose() -> Accel:
    from isobox import sysinfo

    forced = os.environ.get("ISOBOX_VM_ACCEL", "").lower()
    if forced in ("kvm", "tcg"):
        return Accel(forced, None if forced == "kvm" else "TCG forced by ISOBOX_VM_ACCEL: VMs run slowly")
    name, why = sysinfo.accelerator()
    if name == "kvm":
        return Accel("kvm", None)
    return Accel("tcg", f"KVM is not usable for stock guest kernels ({why}); this VM runs under TCG "
                        "emulation, 10-50x slower")


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
