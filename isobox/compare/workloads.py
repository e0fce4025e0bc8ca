"""What the measured workload runs: busybox sh scripts that print a marker after each phase.

Durations are taken on the host side from when each marker arrives (the monitor stamps every
log line as it reads it; natively we stamp the pipe reads the same way), so the image needs no
clock with sub-second resolution -- busybox ``date`` has none -- and a guest clock that drifts
(a VM under TCG) does not skew the figures.
"""

from __future__ import annotations

import calendar
import time

CPU_ITERATIONS = 300_000  # ~0.3 s of awk arithmetic on this host, natively
SYSCALL_BYTES = 20_000  # dd bs=1: one read and one write system call per byte
IO_BLOCKS = 512  # 64 KiB blocks: 32 MiB written, synced, read back

PHASES = ("cpu", "syscall", "io")

BENCH_SCRIPT = f"""echo start
awk 'BEGIN{{s=0;for(i=0;i<{CPU_ITERATIONS};i++)s+=i%7;print s}}' >/dev/null
echo cpu
dd if=/dev/zero of=/dev/null bs=1 count={SYSCALL_BYTES} 2>/dev/null
echo syscall
mkdir -p "$W" && dd if=/dev/zero of="$W/f" bs=65536 count={IO_BLOCKS} 2>/dev/null && sync && cat "$W/f" >/dev/null
rm -f "$W/f"
echo io
"""

# Each probe prints NAME=open when the workload could do it, NAME=blocked otherwise.  All are
# harmless if they succeed: files are opened for append and nothing is written, mounts and
# device nodes are made in the workload's own root.
FACTS_SCRIPT = r"""echo "kernel=$(uname -r)"
echo "capeff=$(grep '^CapEff:' /proc/self/status | cut -f2)"
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2)"
grep -qs isobox "/proc/$HOSTPID/cmdline" && echo hostpids=open || echo hostpids=blocked
mkdir -p /tmp/.probe-mnt && mount -t tmpfs probe /tmp/.probe-mnt 2>/dev/null && echo mount=open || echo mount=blocked
mknod /tmp/.probe-sda b 8 0 2>/dev/null && echo mknod=open || echo mknod=blocked
(: >> /proc/sys/kernel/modprobe) 2>/dev/null && echo modules=open || echo modules=blocked
(: >> /proc/sysrq-trigger) 2>/dev/null && echo sysrq=open || echo sysrq=blocked
[ "$(head -c1 /proc/keys 2>/dev/null | wc -c)" -gt 0 ] && echo keyring=open || echo keyring=blocked
unshare -U true 2>/dev/null && echo userns=open || echo userns=blocked
[ "$(head -c1 /proc/kcore 2>/dev/null | wc -c)" -gt 0 ] && echo kmem=open || echo kmem=blocked
"""

PROBES = {
    "hostpids": "see host processes",
    "mount": "mount a file system",
    "mknod": "create a block device node",
    "modules": "write the module loader path",
    "sysrq": "open /proc/sysrq-trigger for writing",
    "keyring": "read the kernel keyring",
    "userns": "create a user namespace",
    "kmem": "read host kernel memory (/proc/kcore)",
}


def parse_stamp(text: str) -> float:
    """An RFC 3339 time with nanoseconds (the CRI log's) as seconds since the epoch."""
    whole, _, frac = text.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return secs + (float("0." + frac) if frac else 0.0)


def phase_durations(markers: dict[str, float]) -> dict[str, float]:
    """Seconds per phase from the arrival times of the markers (start, cpu, syscall, io)."""
    out: dict[str, float] = {}
    previous = "start"
    for phase in PHASES:
        if phase in markers and previous in markers:
            out[phase] = markers[phase] - markers[previous]
        previous = phase
    return out


def parse_facts(text: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def cap_count(hex_mask: str) -> int | None:
    try:
        return bin(int(hex_mask, 16)).count("1")
    except ValueError:
        return None
