"""Idle container density: host memory per container, over N idle busybox containers.

Starts a private ``isoboxd``, runs ``--count`` containers ``isobox run -d --network none busybox sleep 100000``
one after the other, then measures the proportional set size (PSS, /proc/PID/smaps_rollup) of
everything isobox added:

  isobox-added = sum(PSS of the container monitors) + PSS of the zygote (the lean process the
                 daemon forks monitors from) + the daemon's PSS growth (after - before)

divided by the count.  Bar (../shared/DESIGN.md): <= 2 MiB per container over 200 containers.
For context it also reports the workloads' own PSS (the ``sleep`` processes), the memory the
containers' cgroups are charged, and the drop in MemAvailable per container (kernel objects --
namespaces, mounts, cgroups -- plus page-cache noise from everything else on the host).

The daemon serves one ``isobox run --rm busybox true`` before the baseline, so one-time lazy
set-up (imports, caches) is not counted as per-container memory.  Everything is removed at the
end (``rm -f``), also on Ctrl-C.  The last line of output is one JSON object.

Usage: .venv/bin/python bench/container_density.py [--count N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    MIB,
    Daemon,
    bench_dir,
    cgroup_dirs,
    children_of,
    fmt,
    json_line,
    meminfo,
    print_facts,
    private_daemon,
    pss_bytes,
    rss_bytes,
    sigterm_as_interrupt,
    table,
)

PSS_BAR_MIB = 2.0


def uss_bytes(pid: int) -> int | None:
    """Private (unshared) memory: Private_Clean + Private_Dirty."""
    total, seen = 0, False
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
                    seen = True
    except (OSError, ValueError):
        return None
    return total if seen else None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory_cgroup_usage(parent: str) -> int | None:
    """Bytes charged to the containers' cgroup parent (v1 memory.usage_in_bytes, v2 memory.current)."""
    for path in cgroup_dirs(parent):
        for name in ("memory.usage_in_bytes", "memory.current"):
            try:
                return int((path / name).read_text())
            except (OSError, ValueError):
                continue
    return None


def find_zygote(daemon: Daemon) -> int | None:
    """The daemon's one child running the daemon's own program (not a network's dnsmasq)."""
    def program(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return b""

    kids = [k for k in children_of(daemon.pid) if program(k) == program(daemon.pid)]
    return kids[0] if len(kids) == 1 else None


def inspect_all(daemon: Daemon, ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for start in range(0, len(ids), 50):
        res = daemon.cli("inspect", *ids[start:start + 50], timeout=300)
        out.extend(json.loads(res.stdout))
    return out


def mib(value: float | None) -> float | None:
    return None if value is None else value / MIB


def run(base: Path, count: int) -> dict[str, Any]:
    with private_daemon(base, "d") as daemon:
        daemon.cli("run", "--rm", "busybox", "true")  # warm-up: one-time lazy set-up is not per-container
        time.sleep(1.0)
        zygote = find_zygote(daemon)
        daemon_before = pss_bytes(daemon.pid) or 0
        zygote_before = pss_bytes(zygote) if zygote else None
        mem_before = meminfo()
        cg_before = memory_cgroup_usage(daemon.cgroup_parent) or 0

        ids: list[str] = []
        created = time.monotonic()
        last_report = created
        print(f"starting {count} idle containers (isobox run -d --network none busybox sleep 100000) ...", file=sys.stderr)
        for i in range(count):
            res = daemon.cli("run", "-d", "--network", "none", "busybox", "sleep", "100000", check=False)
            if res.returncode != 0:
                raise RuntimeError(f"container {i + 1} failed to start (exit {res.returncode}): "
                                   f"{res.stderr.strip()[:500]}")
            ids.append(res.stdout.strip().splitlines()[-1])
            now = time.monotonic()
            if now - last_report > 5 or i + 1 == count:
                print(f"  {i + 1}/{count} running ({(now - created) / (i + 1) * 1000:.0f} ms each)",
                      file=sys.stderr)
                last_report = now
        start_secs = time.monotonic() - created
        time.sleep(2.0)  # let the last ones settle

        infos = inspect_all(daemon, ids)
        running = [c for c in infos if c["State"]["Running"]]
        monitors = [int(c["Monitor"]["Pid"]) for c in running if c.get("Monitor", {}).get("Pid")]
        workloads = [int(c["State"]["Pid"]) for c in running if c["State"]["Pid"]]
        monitor_parents = {_ppid(p) for p in monitors}
        zygote_after = find_zygote(daemon)
        if zygote is None or zygote_after != zygote or monitor_parents - {zygote}:
            print(f"warning: zygote detection: daemon children {children_of(daemon.pid)}, "
                  f"monitor parents {sorted(p for p in monitor_parents if p is not None)}", file=sys.stderr)

        mon_pss = [pss_bytes(p) or 0 for p in monitors]
        mon_rss = [rss_bytes(p) or 0 for p in monitors]
        mon_uss = [uss_bytes(p) or 0 for p in monitors]
        wl_pss = [pss_bytes(p) or 0 for p in workloads]
        daemon_after = pss_bytes(daemon.pid) or 0
        zygote_now = (pss_bytes(zygote) or 0) if zygote else 0
        mem_after = meminfo()
        cg_after = memory_cgroup_usage(daemon.cgroup_parent)

        n = len(running)
        daemon_growth = daemon_after - daemon_before
        added = sum(mon_pss) + zygote_now + daemon_growth
        marginal = sum(mon_pss) + (zygote_now - (zygote_before or 0)) + daemon_growth
        avail_delta = mem_before["MemAvailable"] - mem_after["MemAvailable"]
        slab_delta = mem_after.get("Slab", 0) - mem_before.get("Slab", 0)

        def avg(values: list[int]) -> float | None:
            return sum(values) / len(values) if values else None

        per = added / n if n else None
        print()
        print(f"{n} of {count} containers running; started in {start_secs:.1f} s "
              f"({start_secs / count * 1000:.0f} ms per `isobox run -d`, whole CLI process)")
        print(f"daemon pid {daemon.pid}, zygote pid {zygote} ({cmdline(zygote) if zygote else '?'})")
        print()
        rows = [
            ["monitors (sum)", n, fmt(mib(sum(mon_pss))), fmt(mib(avg(mon_pss)), 2),
             "avg RSS " + fmt(mib(avg(mon_rss)), 2) + ", avg USS " + fmt(mib(avg(mon_uss)), 2) + " MiB"],
            ["zygote", 1, fmt(mib(zygote_now)), "", f"before: {fmt(mib(zygote_before))} MiB"],
            ["daemon growth", 1, fmt(mib(daemon_growth)), fmt(mib(daemon_growth / n if n else None), 3),
             f"{fmt(mib(daemon_before))} -> {fmt(mib(daemon_after))} MiB"],
            ["isobox-added total", n, fmt(mib(added)), fmt(mib(per), 3), "monitors + zygote + daemon growth"],
            ["isobox-added, marginal", n, fmt(mib(marginal)), fmt(mib(marginal / n if n else None), 3),
             "zygote growth instead of the whole zygote"],
            ["workloads (sleep)", n, fmt(mib(sum(wl_pss))), fmt(mib(avg(wl_pss)), 3), "for context, not isobox's"],
            ["containers' cgroups charge", n, fmt(mib((cg_after or 0) - cg_before)),
             fmt(mib(((cg_after or 0) - cg_before) / n if n and cg_after is not None else None), 3),
             "memory cgroup usage of the parent, delta"],
            ["MemAvailable drop", n, fmt(mib(avail_delta)), fmt(mib(avail_delta / n if n else None), 3),
             "whole host: includes kernel objects and page-cache noise"],
            ["Slab growth", n, fmt(mib(slab_delta)), fmt(mib(slab_delta / n if n else None), 3),
             "kernel objects (namespaces, mounts, cgroups), host-wide"],
        ]
        print(table(["what", "procs", "total MiB", "per container MiB", "note"], rows, "lrrrl"))
        print()
        verdict = "n/a" if per is None else ("PASS" if per / MIB <= PSS_BAR_MIB else "FAIL")
        print(table(["bar", "measured", "verdict"],
                    [[f"isobox-added PSS per container <= {PSS_BAR_MIB:g} MiB ({count} containers)",
                      fmt(mib(per), 3), verdict]], "lrl"))
        print()
        print(f"removing {len(ids)} containers ...", file=sys.stderr)
        removed = time.monotonic()
        daemon.remove_all()
        print(f"removed in {time.monotonic() - removed:.1f} s", file=sys.stderr)
        return {
            "containers": n,
            "pss_mib_per_container": mib(per),
            "monitor_pss_mib_avg": mib(avg(mon_pss)),
            "daemon_pss_growth_mib": mib(daemon_growth),
            "workload_pss_mib_avg": mib(avg(wl_pss)),
            "memavailable_delta_mib_per_container": mib(avail_delta / n if n else None),
            "zygote_pss_mib": mib(zygote_now),
            "marginal_pss_mib_per_container": mib(marginal / n if n else None),
        }


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="idle containers to run (default 200)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("container_density.py needs root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    print_facts(f"container density: host memory per idle container ({args.count} containers)")
    try:
        with bench_dir() as base:
            summary = run(base, args.count)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    print(json_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
