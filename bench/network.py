"""Networking: TCP throughput and request/response latency on isobox's paths next to host
loopback, and what joining a network adds to a container start.

Traffic.  Every client and server is one static C program (``bench/netbench.c``, compiled with
``gcc -static`` at start into the benchmark's directory): run directly on the host side, and
bind-mounted read-only (``-v DIR:/nb:ro``) into the containers and the VM (virtio-fs there).

  loopback   client and server in the benchmark's network namespace, over 127.0.0.1
  host_ctr   that namespace -> a container's address on the bridge (no NAT), for context
  published  that namespace -> 127.0.0.1:HOSTPORT, DNAT'ed by isobox's nftables to the container
  ctr_ctr    container -> container on the default network (client started by ``isobox exec``)
  ctr_vm     container -> an ``--isolation vm`` workload on the same network (tap, virtio-net)

Throughput: one TCP connection; the client writes 128 KiB chunks for --seconds, half-closes, and
waits for the server's byte count, so the time covers delivery.  Latency: 1-byte ping-pong on one
TCP_NODELAY connection, every round trip timed (after warm-up trips).  Each round measures every
path once, in a rotating order, so load drift hits all alike; a path's ratio to loopback is the
median over rounds of (path / loopback of the same round).  The VM runs under TCG on hosts
without usable KVM, so it gets few rounds (--vm-rounds) and fewer round trips.

Set-up time.  ``Engine.run`` + ``await Engine.wait`` of ``/bin/true`` in this process, as
container_start.py times it (create -> exit, including the network's attach and its release on
exit), on the default network and with ``network="none"`` (still a network namespace of its
own, loopback only), interleaved; the difference of the p50s is what the network adds (bar:
<= 5 ms).  Timers wrapped around the network manager's calls (in this process only) break the
attach and release down.  For context the same pair as whole ``isobox run --rm [--network none]
busybox true`` CLI processes against the daemon (these include the removal, the engine rows not).

Isolation from the host.  Everything runs in two network namespaces the benchmark makes and
removes: one for the daemon (``ISOBOX_NETNS``) and its workloads, where the host-side clients
and the loopback server run too (through ``nsenter``); one that this process joins for its
in-process engine (each isobox owns its namespace's ``isobox0``, nftables table and dnsmasq, so
the two must not share one).  Roots and cgroups are private; on the way out (also on failure or
Ctrl-C) the workloads, daemon, dnsmasq servers, namespaces, cgroups and files go.

    .venv/bin/python bench/network.py [--rounds 8] [--seconds 2] [--vm-rounds 3] [--setup-reps 200] [--no-vm] [--only setup,traffic]

Tables, then one JSON line: {"loopback_gbps", "ctr_ctr_gbps", "ctr_vm_gbps", "published_gbps",
"gbps_ratio": {...}, "rr_p50_us": {...}, "rr_p90_us": {...}, "setup_added_p50_ms", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    VENV_BIN,
    Daemon,
    Summary,
    bench_dir,
    fmt,
    isobox_env,
    netns,
    no_interrupts,
    percentile,
    print_facts,
    ratio,
    remove_all_workloads,
    remove_cgroup_parent,
    sigterm_as_interrupt,
    table,
    tool_version,
)

HERE = Path(__file__).resolve().parent
SETUP_BAR_MS = 5.0
SERVER_PORT = 5201  # netbench's port in the server container and the VM
PUBLISHED_PORT = 18201  # its published host port (in the daemon's namespace)
LOOPBACK_PORT = 5301  # the host-side server's, on 127.0.0.1
GUEST_DIR = "/nb"
ROUTES = ("loopback", "host_ctr", "published", "ctr_ctr", "ctr_vm")
DESCRIPTIONS = {
    "loopback": "host 127.0.0.1 -> host (same netns)",
    "host_ctr": "host -> container address (bridge, no NAT)",
    "published": "host 127.0.0.1:PORT -> container (DNAT)",
    "ctr_ctr": "container -> container (same network)",
    "ctr_vm": "container -> VM (same network, tap)",
    "engine_net": "Engine.run+wait, default network",
    "engine_none": "Engine.run+wait, --network none",
    "cli_net": "isobox run --rm busybox true",
    "cli_none": "isobox run --rm --network none busybox true",
}
SETUP_ROWS = ("engine_net", "engine_none", "cli_net", "cli_none")


class BenchFailed(Exception):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- netbench ------------------------------------------------------------------------------------

def build_netbench(bin_dir: Path) -> Path:
    """Compile netbench.c statically into ``bin_dir`` (readable by all: it is bind-mounted)."""
    bin_dir.mkdir(mode=0o755)
    out = bin_dir / "netbench"
    proc = subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(HERE / "netbench.c")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchFailed(f"gcc -static netbench.c failed: {proc.stderr.strip()[-500:]}")
    out.chmod(0o755)
    return out


def parse_stream(out: str) -> float:
    """Gbps from ``stream bytes=N seconds=S gbps=G``."""
    for line in out.splitlines():
        if line.startswith("stream "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return float(fields["gbps"])
    raise BenchFailed(f"no stream result in {out.strip()[-300:]!r}")


def parse_rr(out: str) -> list[float]:
    for line in out.splitlines():
        if line.startswith("rr_us"):
            return [float(x) for x in line.split()[1:]]
    raise BenchFailed(f"no rr result in {out.strip()[-300:]!r}")


# -- namespaces and processes ----------------------------------------------------------------------

def stop_dnsmasq(run_root: Path) -> list[str]:
    """The networks' dnsmasq servers outlive their daemon by design; ours go with our roots.
    Only a pid whose command line names our pid file is signalled."""
    problems = []
    for pid_file in sorted(run_root.glob("net/*/dnsmasq.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue  # already gone
        if f"--pid-file={pid_file}" not in cmdline.split("\0"):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            problems.append(f"dnsmasq {pid} ignored SIGTERM; killed")
    return problems


def alive(pid: int) -> bool:
    """Running (a zombie is reaped here if it is this process's child: the in-process engine's
    dnsmasq is)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the traffic paths -----------------------------------------------------------------------------

Client = Callable[[list[str], float], str]  # runs netbench with these arguments; returns its stdout


@dataclass
class Route:
    name: str
    client: Client
    host: str
    port: int
    vm: bool = False
    gbps: dict[int, float] = field(default_factory=dict)  # round -> Gbps
    rtt_us: list[float] = field(default_factory=list)
    error: str | None = None

    def stream(self, seconds: float) -> float:
        return parse_stream(self.client(["stream", self.host, str(self.port), str(seconds)], seconds + 60))

    def rr(self, count: int, warmup: int) -> list[float]:
        return parse_rr(self.client(["rr", self.host, str(self.port), str(count), str(warmup)], 120))


def host_client(ns_path: str, netbench: Path) -> Client:
    def run(args: list[str], timeout: float) -> str:
        proc = subprocess.run(["nsenter", f"--net={ns_path}", "--", str(netbench), *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise BenchFailed(f"netbench {args[0]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    return run


def exec_client(daemon: Daemon, container: str) -> Client:
    def run(args: list[str], timeout: float) -> str:
        proc = daemon.cli("exec", container, f"{GUEST_DIR}/netbench", *args, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise BenchFailed(f"isobox exec {container} netbench {args[0]} exited {proc.returncode}: "
                              f"{proc.stderr.strip()[-300:]}")
        return proc.stdout

    return run


def wait_until_serving(route: Route, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            route.rr(1, 0)
            return
        except (BenchFailed, subprocess.TimeoutExpired) as exc:
            if time.monotonic() > deadline:
                raise BenchFailed(f"{route.name}: server not reachable after {timeout:.0f} s: {exc}") from None
            time.sleep(0.5)


def address_of(daemon: Daemon, ref: str) -> tuple[str, dict[str, Any]]:
    info = json.loads(daemon.cli("inspect", ref).stdout)[0]
    nets = info["NetworkSettings"]["Networks"]
    return next(iter(nets.values()))["IPAddress"], info


@dataclass
class Traffic:
    routes: list[Route]
    vm_info: dict[str, Any] = field(default_factory=dict)
    vm_idle_cpu: float | None = None  # share of one core an idle VM used before the rounds


def start_workloads(daemon: Daemon, ns_path: str, netbench: Path, bin_dir: Path, want_vm: bool) -> Traffic:
    volume = f"{bin_dir}:{GUEST_DIR}:ro"
    serve = [f"{GUEST_DIR}/netbench", "serve", "0.0.0.0", str(SERVER_PORT)]
    log("starting: server container (published), client container" + (", VM server" if want_vm else ""))
    daemon.cli("run", "-d", "--name", "nb-srv", "-p", f"{PUBLISHED_PORT}:{SERVER_PORT}", "-v", volume,
               "busybox", *serve)
    daemon.cli("run", "-d", "--name", "nb-cli", "-v", volume, "busybox", "sleep", "1000000")
    srv_ip, _ = address_of(daemon, "nb-srv")
    host = host_client(ns_path, netbench)
    in_ctr = exec_client(daemon, "nb-cli")
    routes = [
        Route("loopback", host, "127.0.0.1", LOOPBACK_PORT),
        Route("host_ctr", host, srv_ip, SERVER_PORT),
        Route("published", host, "127.0.0.1", PUBLISHED_PORT),
        Route("ctr_ctr", in_ctr, srv_ip, SERVER_PORT),
    ]
    traffic = Traffic(routes)
    if want_vm:
        started = time.monotonic()
        daemon.cli("run", "-d", "--isolation", "vm", "--name", "nb-vm", "-v", volume, "busybox", *serve,
                   timeout=600)
        vm_ip, info = address_of(daemon, "nb-vm")
        traffic.vm_info = info.get("Applied", {})
        routes.append(Route("ctr_vm", in_ctr, vm_ip, SERVER_PORT, vm=True))
        log(f"VM up in {time.monotonic() - started:.1f} s ({traffic.vm_info.get('Accelerator', '?')})")
    for route in routes:
        wait_until_serving(route, 180 if route.vm else 30)
    if want_vm and (pid := traffic.vm_info.get("QemuPid")):
        before = cpu_seconds(pid)
        time.sleep(3)
        after = cpu_seconds(pid)
        if before is not None and after is not None:
            traffic.vm_idle_cpu = (after - before) / 3
    return traffic


def measure_traffic(traffic: Traffic, args: argparse.Namespace) -> None:
    routes = traffic.routes
    for rnd in range(args.rounds):
        shift = rnd % len(routes)
        order = routes[shift:] + routes[:shift]
        active = [r for r in order if r.error is None and (not r.vm or rnd < args.vm_rounds)]
        for route in active:
            try:
                route.gbps[rnd] = route.stream(args.seconds)
            except (BenchFailed, subprocess.TimeoutExpired) as exc:
                route.error = f"round {rnd + 1} stream: {exc}"
                log(f"  {route.name}: FAILED: {route.error}")
        for route in active:
            if route.error is not None:
                continue
            count, warmup = (args.vm_rr_count, 20) if route.vm else (args.rr_count, 200)
            try:
                route.rtt_us.extend(route.rr(count, warmup))
            except (BenchFailed, subprocess.TimeoutExpired) as exc:
                route.error = f"round {rnd + 1} rr: {exc}"
                log(f"  {route.name}: FAILED: {route.error}")
        done = ", ".join(f"{r.name} {r.gbps[rnd]:.2f}" for r in routes if rnd in r.gbps)
        log(f"  traffic round {rnd + 1}/{args.rounds}: Gbps {done}")


# -- set-up time -------------------------------------------------------------------------------

class EngineSide:
    """An in-process engine on private roots, in the network namespace this process joined."""

    def __init__(self, root: Path, cgroup_parent: str) -> None:
        root.mkdir(mode=0o711)  # traversable: the network's dnsmasq (user nobody) reads below it
        self.cgroup_parent = cgroup_parent
        os.environ.update(ISOBOX_ROOT=str(root / "root"), ISOBOX_RUN=str(root / "run"),
                          ISOBOX_CGROUP_PARENT=cgroup_parent)
        for key in ("ISOBOX_SOCKET", "ISOBOX_NETNS", "ISOBOX_SUBNET"):
            os.environ.pop(key, None)
        self.run_root = root / "run"
        from isobox.engine import Engine
        from isobox.spec import WorkloadSpec

        self.spec_type = WorkloadSpec
        self.engine = Engine()  # spawns its zygote (a fresh interpreter)
        self.engine.build_image("busybox")
        self.step_seconds: dict[str, float] = {}  # network steps of the current run
        self.step_samples: dict[str, list[float]] = {}  # ms per run with the default network
        self._instrument()

    def _instrument(self) -> None:
        """Time the network manager's attach and detach, and the steps inside them, by wrapping
        them in this process only (the daemon is untouched): the breakdown of what the network
        adds, apart from the container init's own part (its veth pair, address and route)."""
        from isobox.net import dns, links

        manager = self.engine.net
        targets: list[tuple[object, str, str]] = [
            (manager, "attach", "attach (total)"), (manager, "detach", "detach (total)"),
            (manager, "_claim_ports", "claim ports"), (manager, "_apply_rules", "nft ruleset"),
            (manager.db, "allocate", "lease: SQLite insert"), (manager.db, "release", "lease: SQLite delete"),
            (links, "ensure_bridge", "bridge check (netlink, sysctl)"), (links, "delete", "link delete/lookup"),
            (dns, "ensure", "dnsmasq check"), (dns, "write_hosts", "DNS hosts files"),
            (dns, "reload", "dnsmasq SIGHUP"),
        ]
        for owner, name, label in targets:
            original = getattr(owner, name, None)
            if original is None:
                continue  # a step the code no longer has

            def timed(*a: Any, _original: Callable[..., Any] = original, _label: str = label, **kw: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*a, **kw)
                finally:
                    self.step_seconds[_label] = self.step_seconds.get(_label, 0.0) + time.perf_counter() - start

            setattr(owner, name, timed)

    async def once(self, network: str) -> float:
        loop = asyncio.get_running_loop()
        if self.engine.loop is not loop:
            self.engine.bind_loop(loop)
        self.step_seconds = {}
        start = time.perf_counter()
        info = self.engine.run(self.spec_type(image="busybox", command=["/bin/true"], network=network))
        result = await self.engine.wait(info.id)
        elapsed = time.perf_counter() - start
        if network != "none":
            for label, seconds in self.step_seconds.items():
                self.step_samples.setdefault(label, []).append(seconds * 1000)
        self.engine.remove(info.id)
        if result["StatusCode"] != 0:
            raise BenchFailed(f"exit {result['StatusCode']}: {result.get('Error')}")
        return elapsed

    def close(self) -> list[str]:
        problems = remove_all_workloads(self.engine)
        return problems


def run_cli(daemon: Daemon, *args: str) -> float:
    argv = [str(VENV_BIN / "isobox"), "run", "--rm", *args, "busybox", "true"]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=daemon.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=60)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchFailed(f"isobox run exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
    return elapsed


async def measure_setup(engine: EngineSide, daemon: Daemon | None, reps: int, warmup: int
                        ) -> dict[str, list[float]]:
    async def once(row: str) -> float:
        if row == "engine_net":
            return await engine.once("default")
        if row == "engine_none":
            return await engine.once("none")
        assert daemon is not None
        return run_cli(daemon, *(["--network", "none"] if row == "cli_none" else []))

    rows = [r for r in SETUP_ROWS if daemon is not None or r.startswith("engine")]
    for row in rows:
        for _ in range(warmup):
            await once(row)
    engine.step_samples.clear()
    samples: dict[str, list[float]] = {r: [] for r in rows}
    next_report = time.monotonic() + 10
    for rep in range(reps):
        # Alternate the order within a round, so neither of a pair always runs first.
        for row in (rows if rep % 2 == 0 else list(reversed(rows))):
            samples[row].append(await once(row) * 1000)
        await asyncio.sleep(0)
        if time.monotonic() > next_report or rep + 1 == reps:
            p50 = {r: percentile(v, 50) for r, v in samples.items()}
            log(f"  set-up round {rep + 1}/{reps}: p50 ms " + ", ".join(f"{r} {v:.1f}" for r, v in p50.items()))
            next_report = time.monotonic() + 10
    return samples


# -- report ---------------------------------------------------------------------------------------

def median(values: list[float]) -> float | None:
    return percentile(values, 50) if values else None


def report_traffic(traffic: Traffic, args: argparse.Namespace) -> dict[str, Any]:
    by_name = {r.name: r for r in traffic.routes}
    lo = by_name["loopback"]
    lo_rtt = Summary.of(lo.rtt_us)
    rows_t, rows_l = [], []
    out: dict[str, Any] = {"gbps_ratio": {}, "rr_p50_us": {}, "rr_p90_us": {}, "rr_ratio_p50": {}}
    for route in traffic.routes:
        rates = list(route.gbps.values())
        paired = [route.gbps[i] / lo.gbps[i] for i in route.gbps if i in lo.gbps and lo.gbps[i] > 0]
        g = Summary.of(rates)
        r_ratio = median(paired)
        note = f"stopped early: {route.error}" if route.error else ""
        rows_t.append([route.name, DESCRIPTIONS[route.name], g.n, fmt(g.p50, 2), fmt(g.min, 2), fmt(g.max, 2),
                       fmt(r_ratio, 3), note[:80]])
        lat = Summary.of(route.rtt_us)
        l_ratio = ratio(lat.p50, lo_rtt.p50) if lat.n else None
        rows_l.append([route.name, lat.n, fmt(lat.p50), fmt(lat.p90), fmt(lat.min), fmt(l_ratio, 2)])
        out[f"{route.name}_gbps"] = g.p50 if g.n else None
        out["gbps_ratio"][route.name] = r_ratio
        out["rr_p50_us"][route.name] = lat.p50 if lat.n else None
        out["rr_p90_us"][route.name] = lat.p90 if lat.n else None
        out["rr_ratio_p50"][route.name] = l_ratio
    print(f"TCP throughput: one connection, {args.seconds:g} s per run, one run per path per round "
          f"({args.rounds} rounds; VM {min(args.vm_rounds, args.rounds)})")
    print(table(["path", "what", "runs", "p50 Gbps", "min", "max", "x loopback", "note"], rows_t, "llrrrrrl"))
    print()
    print(f"TCP request/response: 1-byte ping-pong, {args.rr_count} round trips per run "
          f"(VM: {args.vm_rr_count}), all runs pooled")
    print(table(["path", "round trips", "p50 us", "p90 us", "min us", "p50 x loopback"], rows_l, "lrrrrr"))
    print()
    if traffic.vm_info:
        idle = traffic.vm_idle_cpu
        print(f"VM: accelerator {traffic.vm_info.get('Accelerator', '?')}, {traffic.vm_info.get('VCPUs', '?')} vCPU, "
              f"{traffic.vm_info.get('MemoryMiB', '?')} MiB; idle it used "
              f"{'-' if idle is None else f'{idle * 100:.0f}%'} of a core while the other paths ran")
        if traffic.vm_info.get("Accelerator") == "tcg":
            print("(TCG: every guest instruction is translated; the VM path's figures are this machine's "
                  "emulation speed, not virtio-net's, and get few rounds)")
        print()
    out["vm_accel"] = traffic.vm_info.get("Accelerator")
    out["rounds"], out["vm_rounds"] = args.rounds, (min(args.vm_rounds, args.rounds) if traffic.vm_info else 0)
    out["stream_seconds"] = args.seconds
    return out


def report_setup(samples: dict[str, list[float]], steps: dict[str, list[float]], reps: int) -> dict[str, Any]:
    stats = {r: Summary.of(v) for r, v in samples.items()}
    rows = [[r, DESCRIPTIONS[r], s.n, fmt(s.p50), fmt(s.p90), fmt(s.min), fmt(s.max)] for r, s in stats.items()]
    print(f"Container start, with and without the default network ({reps} interleaved rounds)")
    print(table(["row", "what", "n", "p50 ms", "p90 ms", "min ms", "max ms"], rows, "llrrrrr"))
    print()

    def p50(row: str) -> float | None:
        s = stats.get(row)
        return s.p50 if s is not None and s.n else None

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    added = diff(p50("engine_net"), p50("engine_none"))
    pairs = [a - b for a, b in zip(samples.get("engine_net", []), samples.get("engine_none", []), strict=False)]
    added_paired = median(pairs)
    cli_added = diff(p50("cli_net"), p50("cli_none"))
    runs = len(samples.get("engine_net", []))
    calls = [a + b for a, b in zip(steps.get("attach (total)", []), steps.get("detach (total)", []), strict=False)]
    net = Summary.of(calls)
    verdict = "n/a" if added is None else ("PASS" if added <= SETUP_BAR_MS else "FAIL")
    print(table(["network added to the start", "ms", "verdict"], [
        ["engine: p50(net) - p50(none) <= 5 ms", fmt(added, 2), verdict],
        ["engine: p50 of per-round differences", fmt(added_paired, 2), ""],
        ["engine: attach + release calls, p50 (p90)", f"{fmt(net.p50, 2)} ({fmt(net.p90, 2)})", ""],
        ["cli: p50(net) - p50(none)", fmt(cli_added, 2), ""],
    ], "lrl"))
    print()
    # A step that did not run in a run counts as 0 ms there (e.g. the ruleset, applied only once).
    order = [label for label in steps if "(total)" in label] + [label for label in steps if "(total)" not in label]
    step_rows = [[label, fmt(percentile(steps[label] + [0.0] * (runs - len(steps[label])), 50), 2),
                  fmt(percentile(steps[label] + [0.0] * (runs - len(steps[label])), 90), 2), len(steps[label])]
                 for label in order]
    print("Where the engine's attach/release time goes (in-process timers, default-network runs)")
    print(table(["step", "p50 ms", "p90 ms", "runs with it"], step_rows, "lrrr"))
    print()
    return {
        "setup_net_p50_ms": p50("engine_net"), "setup_none_p50_ms": p50("engine_none"),
        "setup_net_p90_ms": stats["engine_net"].p90 if "engine_net" in stats else None,
        "setup_none_p90_ms": stats["engine_none"].p90 if "engine_none" in stats else None,
        "setup_added_p50_ms": added, "setup_added_paired_p50_ms": added_paired,
        "setup_attach_release_p50_ms": net.p50 if net.n else None,
        "cli_net_p50_ms": p50("cli_net"), "cli_none_p50_ms": p50("cli_none"), "cli_added_p50_ms": cli_added,
        "setup_bar_ms": SETUP_BAR_MS, "setup_bar_pass": None if added is None else added <= SETUP_BAR_MS,
        "setup_reps": reps,
    }


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


# -- the run --------------------------------------------------------------------------------------

async def bench(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    from isobox.net import hostns

    summary: dict[str, Any] = {}
    problems: list[str] = []
    stack = contextlib.ExitStack()

    def later(fn: Callable[[], object], what: str) -> None:
        """Clean-up, run last-registered first; a failing step is reported, the rest still run."""
        def safe() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                problems.append(f"clean-up, {what}: {type(exc).__name__}: {exc}")

        stack.callback(safe)

    try:
        netbench = build_netbench(base / "bin")
        log(f"built {netbench} (gcc -static)")
        engine_ns = stack.enter_context(netns(f"{base.name}-e"))
        daemon_ns = stack.enter_context(netns(f"{base.name}-d"))
        # This process joins the engine's namespace before its engine spawns the zygote (which
        # inherits it): container inits make their veth peers where the zygote is.
        hostns.enter(engine_ns)

        engine: EngineSide | None = None
        if "setup" in args.only:
            log("setting up: in-process engine, busybox image ...")
            engine_cg = f"{base.name}-e"
            later(lambda: problems.extend(f"cgroup not removed: {x}" for x in remove_cgroup_parent(engine_cg)),
                  "engine cgroups")
            later(lambda: problems.extend(stop_dnsmasq(base / "e" / "run")), "engine dnsmasq")
            engine = EngineSide(base / "e", engine_cg)
            later(lambda: problems.extend(engine.close() if engine is not None else []), "engine")

        root = base / "d"
        root.mkdir(mode=0o711)  # traversable: the network's dnsmasq (user nobody) reads below it
        env = isobox_env(root, f"{base.name}-d")
        env["ISOBOX_NETNS"] = daemon_ns
        daemon = Daemon(root, env)
        later(lambda: problems.extend(f"cgroup not removed: {x}" for x in remove_cgroup_parent(daemon.cgroup_parent)),
              "daemon cgroups")
        later(lambda: problems.extend(stop_dnsmasq(Path(env["ISOBOX_RUN"]))), "daemon dnsmasq")
        later(lambda: problems.extend(daemon.problems), "daemon")
        later(daemon.stop, "daemon stop")
        later(lambda: daemon.remove_all() if daemon.proc is not None and daemon.proc.poll() is None else None,
              "workloads")
        log("setting up: daemon in its network namespace, busybox image ...")
        daemon.start()
        daemon.cli("image", "build", "busybox", timeout=300)

        if engine is not None:
            log(f"measuring set-up time: {args.setup_warmup} warm-up + {args.setup_reps} interleaved rounds "
                f"of {', '.join(SETUP_ROWS)}")
            samples = await measure_setup(engine, daemon, args.setup_reps, args.setup_warmup)
            print()
            summary.update(report_setup(samples, engine.step_samples, args.setup_reps))

        if "traffic" in args.only:
            log(f"starting the loopback server in {daemon_ns}")
            server = subprocess.Popen(["nsenter", f"--net={daemon_ns}", "--", str(netbench), "serve", "127.0.0.1",
                                       str(LOOPBACK_PORT)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      text=True)

            def stop_server() -> None:
                server.kill()
                server.wait(10)

            later(stop_server, "loopback server")
            assert server.stdout is not None
            if not server.stdout.readline().startswith("listening"):
                raise BenchFailed("the loopback netbench server did not start")
            traffic = start_workloads(daemon, daemon_ns, netbench, base / "bin", not args.no_vm)
            log(f"measuring traffic: {args.rounds} rounds of {', '.join(r.name for r in traffic.routes)}"
                + (f" (the VM in the first {args.vm_rounds})" if traffic.vm_info else ""))
            started = time.monotonic()
            measure_traffic(traffic, args)
            log(f"traffic measured in {time.monotonic() - started:.0f} s")
            print()
            summary.update(report_traffic(traffic, args))
        return summary
    finally:
        log("cleaning up ...")
        with no_interrupts():
            stack.close()
            for problem in problems:
                log(f"warning: {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="traffic rounds (one run of each path per round)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one throughput run")
    parser.add_argument("--rr-count", type=int, default=5000, help="round trips per latency run")
    parser.add_argument("--vm-rounds", type=int, default=3, help="rounds that include the VM path (TCG is slow)")
    parser.add_argument("--vm-rr-count", type=int, default=1000, help="round trips per latency run to the VM")
    parser.add_argument("--no-vm", action="store_true", help="leave out the container -> VM path")
    parser.add_argument("--setup-reps", type=int, default=200, help="interleaved set-up-time rounds")
    parser.add_argument("--setup-warmup", type=int, default=5, help="untimed starts of each set-up row first")
    parser.add_argument("--only", default="setup,traffic", help="setup, traffic or both (comma-separated)")
    args = parser.parse_args()
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    if unknown := args.only - {"setup", "traffic"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        log("network.py needs root (network namespaces, cgroups, mounts)")
        return 2
    sigterm_as_interrupt()
    print_facts("networking: throughput and latency against loopback; network set-up per start")
    for tool, argv in (("gcc", ["gcc", "--version"]), ("dnsmasq", ["dnsmasq", "--version"]),
                       ("nft", ["nft", "--version"]), ("qemu", ["qemu-system-x86_64", "--version"])):
        print(f"- {tool}: {tool_version(argv)}")
    print()
    try:
        with bench_dir("ibx-net") as base:
            base.chmod(0o711)  # dnsmasq runs as nobody and reads its hosts file under here
            summary = asyncio.run(bench(base, args))
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except (BenchFailed, RuntimeError, subprocess.SubprocessError) as exc:
        log(f"network.py failed: {exc}")
        return 1
    print(json.dumps(rounded(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
