"""VM boot to workload: ``isobox run --rm --isolation vm busybox true`` against a bare QEMU.

The peer is a bare ``qemu-system-x86_64`` with the same machine, accelerator, kernel, kernel
command line and RAM, booting isobox's initramfs with a one-line ``/init`` (``true``, then
power off), appended as a second cpio so everything else is byte-identical.  Both are timed
from process start to process exit.  Then one VM is left running to measure the VMM's memory
overhead: QEMU's RSS minus the guest RAM mapping's RSS minus TCG's translation cache (capped
with ``tb-size``), from /proc/PID/smaps, once when ``run -d`` returns and again 10 s later (QEMU
keeps growing while the guest settles: the larger of the two is the figure).

For context (no bar, no peer): the firmware boot of a full OS, ``isobox run -d --isolation vm
debian:bookworm-bootable`` (built first: ``image build debian:bookworm --bootable``) timed from
the command's start to ``login:`` on the serial console (console.log, polled every 20 ms).

    python bench/vm_boot.py [--runs N] [--firmware-runs N (0: skip)]

Table, then one JSON line: {"accel", "isobox_p50_s", "bare_qemu_p50_s", "ratio", "vmm_overhead_mib", ...,
"firmware_boot_p50_s"}.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    MIB,
    Daemon,
    Summary,
    bench_dir,
    fmt,
    json_line,
    print_facts,
    private_daemon,
    ratio,
    sigterm_as_interrupt,
    table,
)
from isobox.runtimes.vm import guest, qemu  # noqa: E402

BARE_INIT = b"#!/bin/sh\n/bin/busybox true\n/bin/busybox poweroff -f\n"
BOOTABLE = "debian:bookworm-bootable"
LOGIN_TIMEOUT = 600.0
SETTLE_S = 10.0


def bare_initramfs(base: Path, initramfs: Path) -> Path:
    """isobox's initramfs with /init replaced (a later cpio entry wins when the kernel unpacks)."""
    extra = guest.Cpio()
    extra.file("init", BARE_INIT, 0o755)
    out = base / "bare.cpio"
    out.write_bytes(initramfs.read_bytes() + extra.finish())
    return out


def bare_argv(cmdline: list[str], initrd: Path) -> list[str]:
    """The isobox command line without disks, ports, sockets and sandbox: just the boot."""
    keep = {"-machine", "-accel", "-cpu", "-m", "-smp", "-kernel", "-append"}
    argv = [qemu.QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "null"]
    for i, arg in enumerate(cmdline):
        if arg in keep:
            argv += [arg, cmdline[i + 1]]
    return [*argv, "-initrd", str(initrd)]


def warm(files: list[Path]) -> None:
    """Read ``files`` into the page cache (untimed)."""
    for path in files:
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def firmware_boot_to_login(daemon: Daemon) -> float:
    """Seconds from ``isobox run -d`` of the bootable Debian disk to ``login:`` on its console."""
    start = time.perf_counter()
    cid = daemon.cli("run", "-d", "--network", "none", "--isolation", "vm", BOOTABLE, timeout=300).stdout.split()[-1]
    try:
        console = Path(json.loads(daemon.cli("inspect", cid).stdout)[0]["Applied"]["ConsoleLog"])
        seen = b""
        with open(console, "rb") as fh:
            while b"login:" not in seen[-4096:]:
                if time.perf_counter() - start > LOGIN_TIMEOUT:
                    raise RuntimeError(f"no login prompt after {LOGIN_TIMEOUT:.0f} s: {seen[-500:]!r}")
                chunk = fh.read()
                if chunk:
                    seen += chunk
                else:
                    time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        daemon.cli("rm", "-f", cid, timeout=120)


def smaps_breakdown(pid: int, guest_mib: int, tb_mib: int) -> dict[str, float]:
    """RSS split into guest RAM, translation cache and the rest (MiB); the rest also as its
    anonymous part (what each VM costs privately, its copies of the kernel and initramfs
    included: not the QEMU binary and libraries, which are page cache shared by every VM)."""
    total = guest_ram = tb = anon_rest = 0
    size, kind, perms = 0, "", ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            size, perms = hi - lo, fields[1]
            kind = ("guest" if size == guest_mib * MIB
                    else "tb" if "x" in perms and "w" in perms and size >= tb_mib * MIB // 2  # TCG code buffer
                    else "rest")
        elif fields[0] == "Rss:":
            rss = int(fields[1]) * 1024
            total += rss
            guest_ram += rss if kind == "guest" else 0
            tb += rss if kind == "tb" else 0
        elif fields[0] == "Anonymous:" and kind == "rest":
            anon_rest += int(fields[1]) * 1024
    return {"rss_mib": total / MIB, "guest_ram_mib": guest_ram / MIB, "tcg_cache_mib": tb / MIB,
            "vmm_overhead_mib": (total - guest_ram - tb) / MIB, "vmm_overhead_anon_mib": anon_rest / MIB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--firmware-runs", type=int, default=3, help="full-OS firmware boots (0: skip)")
    args = parser.parse_args()
    sigterm_as_interrupt()
    print_facts("VM boot to workload")
    with bench_dir("ibx-vm") as base, private_daemon(base) as daemon:
        # --network none throughout: the bare QEMU has no NIC (bench/network.py measures one)
        daemon.cli("run", "--rm", "--network", "none", "--isolation", "vm", "busybox", "true", timeout=600)
        cid = daemon.cli("run", "-d", "--network", "none", "--isolation", "vm", "busybox", "sleep", "1000",
                         timeout=600).stdout.split()[-1]
        info = json.loads(daemon.cli("inspect", cid).stdout)[0]["Applied"]
        accel = info["Accelerator"]
        cmdline = info["QemuCommandLine"]
        cap = re.search(r"tb-size=(\d+)", cmdline)
        tb_mib = int(cap.group(1)) if cap else 0  # 0 under KVM: no translation cache
        at_start = smaps_breakdown(info["QemuPid"], info["MemoryMiB"], tb_mib)
        time.sleep(SETTLE_S)
        settled = smaps_breakdown(info["QemuPid"], info["MemoryMiB"], tb_mib)
        breakdown = max(at_start, settled, key=lambda b: b["vmm_overhead_mib"])
        daemon.cli("rm", "-f", cid, timeout=120)

        argv = bare_argv(shlex.split(cmdline), bare_initramfs(base, Path(info["Initramfs"])))
        isobox_times, bare_times = [], []
        isobox_argv = [str(Path(sys.executable).parent / "isobox"), "run", "--rm", "--network", "none",
                       "--isolation", "vm", "busybox", "true"]
        # isobox's monitor reclaims QEMU's mappings of the kernel and the initramfs once the guest
        # runs (kernelimage.release), which drops their page cache: each timed boot starts with
        # both files cached, so that neither row pays the other's cold read (~50 ms).
        cached = [Path(info["Kernel"]), Path(info["Initramfs"]), Path(argv[argv.index("-initrd") + 1])]
        for round_no in range(args.runs):
            if round_no % 2:  # alternate which goes first: neither always follows the other's exit
                warm(cached)
                bare_times.append(timed(argv))
                warm(cached)
                isobox_times.append(timed(isobox_argv, daemon.env))
            else:
                warm(cached)
                isobox_times.append(timed(isobox_argv, daemon.env))
                warm(cached)
                bare_times.append(timed(argv))
        firmware_times: list[float] = []
        build_s = float("nan")
        if args.firmware_runs > 0:
            started = time.perf_counter()
            daemon.cli("image", "build", "debian:bookworm", "--bootable", timeout=1800)
            build_s = time.perf_counter() - started
            firmware_times = [firmware_boot_to_login(daemon) for _ in range(args.firmware_runs)]
    iso, bare, fw = Summary.of(isobox_times), Summary.of(bare_times), Summary.of(firmware_times)
    print(table(["", "runs", "p50 s", "p90 s", "min s"],
                [["isobox run --rm --isolation vm busybox true", iso.n, fmt(iso.p50, 2), fmt(iso.p90, 2), fmt(iso.min, 2)],
                 ["bare qemu-system-x86_64 (same kernel+initramfs, init=true)", bare.n, fmt(bare.p50, 2),
                  fmt(bare.p90, 2), fmt(bare.min, 2)]]))
    if fw.n:
        print()
        print(table(["for context: a full OS by firmware", "runs", "p50 s", "p90 s", "min s"],
                    [[f"isobox run -d --isolation vm {BOOTABLE} -> login: (SeaBIOS, q35)", fw.n, fmt(fw.p50, 1),
                      fmt(fw.p90, 1), fmt(fw.min, 1)]]))
        print(f"(the image build before it, cold: {fmt(build_s, 1)} s)")
    print()
    print(table(["QEMU memory (idle busybox VM), MiB", "at start", f"{SETTLE_S:.0f} s later"],
                [[k, fmt(v), fmt(settled[k])] for k, v in at_start.items()]))
    print(f"\naccelerator: {accel}; tb-size cap {tb_mib} MiB; guest RAM {info['MemoryMiB']} MiB")
    # Each round boots both back to back: the per-round figures cancel the machine's slow drifts
    # (boots here vary by +-15% from one minute to the next), which the ratio of p50s does not.
    paired = Summary.of([i / b for i, b in zip(isobox_times, bare_times, strict=True)])
    extra = Summary.of([i - b for i, b in zip(isobox_times, bare_times, strict=True)])
    print(f"per round: isobox/bare p50 {fmt(paired.p50, 3)} (p90 {fmt(paired.p90, 3)}); "
          f"isobox - bare p50 {fmt(extra.p50, 2)} s (p90 {fmt(extra.p90, 2)} s)")
    print(json_line({"accel": accel, "isobox_p50_s": iso.p50, "bare_qemu_p50_s": bare.p50,
                     "ratio": ratio(iso.p50, bare.p50), "ratio_paired_p50": paired.p50,
                     "extra_p50_s": extra.p50, "vmm_overhead_mib": breakdown["vmm_overhead_mib"],
                     "vmm_overhead_at_start_mib": at_start["vmm_overhead_mib"], "tcg_cache_cap_mib": tb_mib,
                     "tcg_cache_mib": breakdown["tcg_cache_mib"], "guest_ram_touched_mib": breakdown["guest_ram_mib"],
                     "vmm_overhead_anon_mib": breakdown["vmm_overhead_anon_mib"],
                     "qemu_rss_mib": breakdown["rss_mib"], "firmware_boot_p50_s": fw.p50,
                     "firmware_boot_runs": fw.n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
