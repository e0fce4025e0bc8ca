"""Which of the usual claims hold on this host, from a compare result.  Each claim is
(text, holds: True/False/None for "cannot tell here", evidence)."""

from __future__ import annotations

from typing import Any

FAST_START_MS = 100.0  # "milliseconds": well under a tenth of a second to the workload's exit
NEAR_NATIVE = 1.25  # "close to native": within 25 % of native CPU time


def _p50(level: dict[str, Any] | None, key: str) -> float | None:
    if not level or not level.get("available"):
        return None
    value = level.get(key, {}).get("p50")
    return float(value) if value is not None else None


def _cpu(level: dict[str, Any] | None) -> float | None:
    if not level or not level.get("available"):
        return None
    value = (level.get("ratios") or {}).get("cpu")
    return float(value) if value is not None else None


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    levels = result.get("levels", {})
    container, gvisor, vm = levels.get("container"), levels.get("gvisor"), levels.get("vm")
    accel = (result.get("host") or {}).get("accelerator", "unknown")
    claims = []

    start = _p50(container, "start_exit_ms")
    if start is None:
        claims.append(_claim("containers start in milliseconds", None, "no container level measured"))
    else:
        claims.append(_claim("containers start in milliseconds", start < FAST_START_MS,
                             f"container start to exit p50 {start:.1f} ms"))

    vm_start, vm_mem = _p50(vm, "start_exit_ms"), (vm or {}).get("memory_added_bytes")
    c_mem = (container or {}).get("memory_added_bytes")
    if vm_start is None or start is None:
        why = (vm or {}).get("why") or "the VM level is not available here"
        claims.append(_claim("VMs need more time and memory", None, why))
    else:
        more_mem = vm_mem is not None and c_mem is not None and vm_mem > c_mem
        claims.append(_claim("VMs need more time and memory", vm_start > start and more_mem,
                             f"VM start p50 {vm_start:.0f} ms vs container {start:.1f} ms; memory added "
                             f"{_mib(vm_mem)} vs {_mib(c_mem)}"))

    vm_cpu = _cpu(vm)
    if vm_cpu is None:
        claims.append(_claim("with hardware acceleration VMs are close to native", None,
                             (vm or {}).get("why") or "the VM level is not available here"))
    elif accel != "kvm":
        claims.append(_claim("with hardware acceleration VMs are close to native", False,
                             f"this host runs VMs under {accel.upper()} (software emulation), no hardware "
                             f"acceleration: CPU-bound work takes {vm_cpu:.1f}x native time"))
    else:
        claims.append(_claim("with hardware acceleration VMs are close to native", vm_cpu <= NEAR_NATIVE,
                             f"KVM: CPU-bound work takes {vm_cpu:.2f}x native time"))

    g_cpu, g_sys = _cpu(gvisor), ((gvisor or {}).get("ratios") or {}).get("syscall")
    if g_cpu is not None and g_sys is not None:
        claims.append(_claim("gVisor costs little on computation and much on system calls",
                             g_cpu <= NEAR_NATIVE and g_sys > 2 * g_cpu,
                             f"gVisor: CPU {g_cpu:.2f}x, system calls {g_sys:.1f}x native time"))
    return claims


def _claim(text: str, holds: bool | None, evidence: str) -> dict[str, Any]:
    return {"claim": text, "holds": holds, "evidence": evidence}


def _mib(value: Any) -> str:
    return "?" if value is None else f"{value / (1 << 20):.1f} MiB"
