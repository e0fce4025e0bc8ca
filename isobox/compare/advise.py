"""``isobox advise``: a level for a workload's needs, with reasons, from deterministic rules.

The rules, in order (the first that decides wins; README "Choosing a level"):

1. Needs another kernel or another OS (Windows, BSD, a kernel module)  -> vm: only a VM has its own kernel.
2. Runs untrusted code:
   a. start-latency budget below the VM's measured start (or no VM level) -> gvisor (if available)
   b. otherwise -> vm (hardware boundary; gVisor named as the lighter alternative)
3. Trusted code                                                        -> container (cheapest) unless
   the container level is unavailable.
Modifiers, reported as reasons: many instances favour the level with the least memory added; a
bursty workload weighs start latency; a budget the chosen level misses on this host is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Needs:
    untrusted: bool = False
    other_kernel: bool = False
    instances: int = 1
    start_budget_ms: float | None = None
    pattern: str = "long-running"  # or "bursty"


@dataclass
class Advice:
    level: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rule: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "rule": self.rule, "reasons": self.reasons, "warnings": self.warnings,
                "figures": self.figures}


def _level(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    level = (result.get("levels") or {}).get(name)
    return level if level and level.get("available") else None


def _start(level: dict[str, Any] | None) -> float | None:
    return None if level is None else level["start_exit_ms"]["p50"]


def _mem(level: dict[str, Any] | None) -> float | None:
    value = None if level is None else level.get("memory_added_bytes")
    return None if value is None else value / (1 << 20)


def advise(needs: Needs, result: dict[str, Any]) -> Advice:
    container, gvisor, vm = (_level(result, n) for n in ("container", "gvisor", "vm"))
    accel = (result.get("host") or {}).get("accelerator", "unknown")
    figures = {name: {"start_ms": _start(lv), "memory_added_mib": _mem(lv)}
               for name, lv in (("container", container), ("gvisor", gvisor), ("vm", vm)) if lv}
    if needs.other_kernel:
        advice = Advice("vm", ["it needs its own kernel or OS: only a VM runs one"], rule="1-other-kernel")
        if vm is None:
            advice.warnings.append("the VM level is not available on this host")
    elif needs.untrusted:
        vm_start = _start(vm)
        too_slow = needs.start_budget_ms is not None and (vm_start is None or vm_start > needs.start_budget_ms)
        if (vm is None or too_slow) and gvisor is not None:
            why = ("no VM level here" if vm is None else
                   f"a VM starts in {vm_start:.0f} ms here, over the {needs.start_budget_ms:.0f} ms budget")
            advice = Advice("gvisor", ["untrusted code must not reach the host kernel directly: gVisor's "
                                       "Sentry answers its system calls", why], rule="2a-untrusted-fast")
        elif vm is not None:
            advice = Advice("vm", ["untrusted code gets its own kernel behind the hardware boundary"],
                            rule="2b-untrusted-vm")
            if gvisor is not None:
                advice.reasons.append(f"gVisor is the lighter alternative here (starts in {_start(gvisor):.0f} ms, "
                                      f"adds {_mem(gvisor):.0f} MiB)")
            if accel != "kvm":
                advice.warnings.append(f"VMs run under {accel.upper()} here: expect them to be slow")
        else:
            advice = Advice("container", ["neither gVisor nor a VM is available here"], rule="2c-untrusted-none")
            advice.warnings.append("untrusted code in a container shares the host kernel: install runsc")
    else:
        advice = Advice("container", ["trusted code: a container is the cheapest isolation that still "
                                      "separates workloads"], rule="3-trusted")
        if container is None:
            advice.warnings.append("the container level was not measured here")
    chosen = {"container": container, "gvisor": gvisor, "vm": vm}[advice.level]
    start, mem = _start(chosen), _mem(chosen)
    if start is not None:
        advice.reasons.append(f"{advice.level} starts in {start:.1f} ms (p50) on this host")
    if needs.instances > 1 and mem is not None:
        advice.reasons.append(f"{needs.instances} instances add about {needs.instances * mem:.0f} MiB of host memory "
                              f"({mem:.1f} MiB each)")
    if needs.pattern == "bursty" and start is not None:
        advice.reasons.append(f"bursty: every burst pays the {start:.0f} ms start")
    if needs.start_budget_ms is not None and start is not None and start > needs.start_budget_ms:
        advice.warnings.append(f"{advice.level} misses the {needs.start_budget_ms:.0f} ms start budget here "
                               f"({start:.0f} ms): keep instances warm")
    advice.figures = figures
    return advice


def text(advice: Advice, source: str) -> str:
    lines = [f"Recommended isolation: {advice.level}   (rule {advice.rule}; figures from {source})", ""]
    lines += [f"  - {r}" for r in advice.reasons]
    lines += [f"  ! {w}" for w in advice.warnings]
    return "\n".join(lines)
