"""``isobox advise``'s rules, every branch, and the claims and reports compare prints."""

from __future__ import annotations

from typing import Any

import pytest

from isobox.compare import claims, report
from isobox.compare.advise import Needs, advise


def level(start_ms: float, mem_mib: float, cpu: float = 1.0, syscall: float = 1.0) -> dict[str, Any]:
    stat = {"p50": start_ms, "p90": start_ms, "n": 3, "samples": []}
    return {"available": True, "start_exit_ms": stat, "start_first_ms": stat,
            "memory_bytes": int(mem_mib * (1 << 20)), "memory_added_bytes": int(mem_mib * (1 << 20)),
            "ratios": {"cpu": cpu, "syscall": syscall, "io": 1.0},
            "phases_ms": {p: stat for p in ("cpu", "syscall", "io")},
            "facts": {"kernel": "k", "syscalls": "s", "capabilities": 11, "probes": {"mount": "blocked"}}}


def result(vm: bool = True, gvisor: bool = True, accel: str = "tcg") -> dict[str, Any]:
    levels = {"native": level(2, 0), "container": level(40, 0.5, 1.1, 1.1)}
    levels["gvisor"] = level(300, 15, 1.2, 40) if gvisor else {"available": False, "why": "runsc is not installed"}
    levels["vm"] = level(10000, 260, 9.0, 5.0) if vm else {"available": False, "why": "not part of this build"}
    return {"id": "x", "image": "busybox", "command": ["true"], "repetitions": 3,
            "host": {"accelerator": accel, "kernel": "6", "cpus": 2}, "levels": levels}


@pytest.mark.parametrize("needs, res, level_, rule", [
    (Needs(other_kernel=True), result(), "vm", "1-other-kernel"),
    (Needs(untrusted=True), result(), "vm", "2b-untrusted-vm"),
    (Needs(untrusted=True, start_budget_ms=500), result(), "gvisor", "2a-untrusted-fast"),
    (Needs(untrusted=True), result(vm=False), "gvisor", "2a-untrusted-fast"),
    (Needs(untrusted=True), result(vm=False, gvisor=False), "container", "2c-untrusted-none"),
    (Needs(), result(), "container", "3-trusted"),
])
def test_each_rule(needs: Needs, res: dict[str, Any], level_: str, rule: str) -> None:
    advice = advise(needs, res)
    assert (advice.level, advice.rule) == (level_, rule)
    assert advice.reasons


def test_other_kernel_without_vm_warns() -> None:
    advice = advise(Needs(other_kernel=True), result(vm=False))
    assert advice.level == "vm" and "not available" in advice.warnings[0]


def test_untrusted_vm_under_tcg_warns_and_names_gvisor() -> None:
    advice = advise(Needs(untrusted=True), result(accel="tcg"))
    assert any("TCG" in w for w in advice.warnings)
    assert any("gVisor is the lighter alternative" in r for r in advice.reasons)


def test_modifiers_instances_bursty_and_missed_budget() -> None:
    advice = advise(Needs(instances=100, pattern="bursty", start_budget_ms=10), result())
    text = " ".join(advice.reasons)
    assert "100 instances add about 50 MiB" in text and "bursty" in text
    assert any("misses the 10 ms start budget" in w for w in advice.warnings)


def test_claims_under_tcg_and_kvm() -> None:
    by_text = {c["claim"]: c for c in claims.evaluate(result(accel="tcg"))}
    assert by_text["containers start in milliseconds"]["holds"] is True
    assert by_text["VMs need more time and memory"]["holds"] is True
    assert by_text["with hardware acceleration VMs are close to native"]["holds"] is False
    assert "TCG" in by_text["with hardware acceleration VMs are close to native"]["evidence"]
    kvm = result(accel="kvm")
    kvm["levels"]["vm"]["ratios"]["cpu"] = 1.05
    by_text = {c["claim"]: c for c in claims.evaluate(kvm)}
    assert by_text["with hardware acceleration VMs are close to native"]["holds"] is True


def test_claims_without_vm_cannot_tell() -> None:
    by_text = {c["claim"]: c for c in claims.evaluate(result(vm=False))}
    assert by_text["VMs need more time and memory"]["holds"] is None


def test_reports_name_every_level_and_the_missing_ones() -> None:
    res = result(vm=False)
    res["claims"] = claims.evaluate(res)
    text = report.text(res)
    assert "container" in text and "gvisor" in text and "vm: not part of this build" in text
    page = report.html_page(res)
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page  # self-contained
