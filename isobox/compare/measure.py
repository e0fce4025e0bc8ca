"""Running the probe workloads natively and at each isolation level the engine offers.

Natively, the image's own binaries run as plain host processes straight from the layer
directory (argv[0] keeps the applet name, so busybox dispatches as usual; PATH points into the
layer).  At a level, the engine runs the same command from the same image and spec; times come
from the monitor's log stamps and the exit file, so the CLI and HTTP are not part of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isobox import paths
from isobox.compare import workloads
from isobox.errors import IsoboxError, NotFound
from isobox.logs import read_entries
from isobox.runtimes.container.config import DEFAULT_PATH

if TYPE_CHECKING:
    from isobox.engine import Engine
    from isobox.images.store import Image

RUN_TIMEOUT = 300.0


@dataclass
class Sample:
    """One run of a workload: when its first output arrived, when it ended, its output."""

    first_s: float | None
    exit_s: float
    exit_code: int
    lines: list[tuple[float, str]] = field(default_factory=list)  # (arrival, line)

    def text(self) -> str:
        return "".join(line + "\n" for _, line in self.lines)

    def markers(self) -> dict[str, float]:
        return {line.strip(): stamp for stamp, line in self.lines}


def summary(values: list[float]) -> dict[str, Any]:
    """p50/p90 (nearest rank) in milliseconds, with the samples."""
    if not values:
        return {"p50": None, "p90": None, "n": 0, "samples": []}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered) + 0.5) - 1))]
    return {"p50": round(statistics.median(ordered) * 1000, 2), "p90": round(p90 * 1000, 2),
            "n": len(ordered), "samples": [round(v * 1000, 2) for v in values]}


# -- natively ----------------------------------------------------------------------------------


def _resolve_in_layers(layers: list[Path], name: str, path_dirs: list[str]) -> tuple[Path, str] | None:
    """(host path of the binary, layer) for argv[0], following symlinks inside the layer."""
    candidates = [name] if "/" in name else [os.path.join(d, name) for d in path_dirs]
    for layer in layers:
        for candidate in candidates:
            target = layer / candidate.lstrip("/")
            for _ in range(8):
                if not target.is_symlink():
                    break
                link = os.readlink(target)
                target = layer / link.lstrip("/") if link.startswith("/") else target.parent / link
            if target.is_file() and os.access(target, os.X_OK):
                return target, str(layer)
    return None


class Native:
    """The baseline: the image's binaries as plain host processes, no isolation at all."""

    name = "native"

    def __init__(self, image: Image) -> None:
        self.layers = [Path(p) for p in reversed(image.layers)]  # topmost first
        env = dict(item.split("=", 1) for item in image.config.env if "=" in item)
        self.path_dirs = env.get("PATH", DEFAULT_PATH).split(":")
        self.scratch = Path(tempfile.mkdtemp(prefix="compare-", dir=paths.state_root()))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _command(self, argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
        found = _resolve_in_layers(self.layers, argv[0], self.path_dirs)
        if found is None:
            raise NotFound(f"{argv[0]!r} is not in the image: it cannot run natively")
        exe, layer = found
        path = ":".join(os.path.join(layer, d.lstrip("/")) for d in self.path_dirs)
        env = {"PATH": path, "HOME": str(self.scratch), "W": str(self.scratch / "io"),
               "HOSTPID": str(os.getpid())}
        return str(exe), argv, env

    def run(self, argv: list[str]) -> Sample:
        exe, args, env = self._command(argv)
        t0 = time.time()
        proc = subprocess.Popen(args, executable=exe, env=env, cwd=self.scratch, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines: list[tuple[float, str]] = []
        first: float | None = None
        pending = b""
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            now = time.time()
            if not chunk:
                break
            first = now if first is None else first
            pending += chunk
            *done, pending = pending.split(b"\n")
            lines.extend((now - t0, line.decode(errors="replace")) for line in done)
        code = proc.wait()
        end = time.time()
        proc.stdout.close()
        return Sample(None if first is None else first - t0, end - t0, code, lines)

    def memory(self) -> int:
        """RSS of an idle ``sleep``: what the workload itself costs, with no isolation."""
        exe, args, env = self._command(["sleep", "30"])
        proc = subprocess.Popen(args, executable=exe, env=env, stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            return _rss(proc.pid)
        finally:
            proc.kill()
            proc.wait()

    def facts(self) -> dict[str, Any]:
        return {"kernel": f"host's ({os.uname().release})", "kernel_shared": True,
                "syscalls": "all (no filter)", "capabilities": "all a root process holds",
                "probes": {name: "n/a (the host itself)" for name in workloads.PROBES}}


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- through the engine -------------------------------------------------------------------------


class Level:
    """One isolation level, driven through the engine like any workload."""

    def __init__(self, engine: Engine, name: str, image_ref: str) -> None:
        self.engine = engine
        self.name = name
        self.image_ref = image_ref

    def close(self) -> None:
        pass

    def _spec(self, argv: list[str], env: dict[str, str] | None = None) -> Any:
        from isobox.spec import Isolation, WorkloadSpec

        # --network none: gVisor joins no isobox network yet, so every level is measured without
        # one (bench/network.py measures what a network adds).
        return WorkloadSpec(image=self.image_ref, command=[], entrypoint=argv, isolation=Isolation(self.name),
                            network="none", env={"W": "/iobench", "HOSTPID": str(os.getpid()), **(env or {})})

    def _wait(self, container_id: str, timeout: float) -> Any:
        """Until the workload has ended and the engine has settled it (with or without a loop)."""
        rec = self.engine.store.find_container(container_id)
        if rec.state == "running" and not self.engine._wait_monitor(rec, timeout):
            self.engine.remove(container_id, force=True)
            raise IsoboxError(f"the {self.name} workload did not end within {timeout:.0f} s")
        return self.engine.store.find_container(container_id)

    def run(self, argv: list[str]) -> Sample:
        from isobox.runtimes.container.runtime import log_path

        t0 = time.time()
        info = self.engine.run(self._spec(argv))
        try:
            rec = self._wait(info.id, RUN_TIMEOUT)
            end = rec.finished_at or time.time()
            data = b""
            with contextlib.suppress(OSError):
                data = log_path(info.id).read_bytes()
            lines: list[tuple[float, str]] = []
            pending = ""
            for entry in read_entries(data):
                if entry.stream != 1:
                    continue
                stamp = workloads.parse_stamp(entry.time) - t0
                text = pending + entry.data.decode(errors="replace")
                if text.endswith("\n"):
                    lines.append((stamp, text[:-1]))
                    pending = ""
                else:
                    pending = text
            first = lines[0][0] if lines else None
            return Sample(first, end - t0, rec.exit_code or 0, lines)
        finally:
            with contextlib.suppress(IsoboxError):
                self.engine.remove(info.id, force=True)

    def memory(self) -> tuple[int | None, dict[str, Any]]:
        info = self.engine.run(self._spec(["sleep", "30"]))
        try:
            time.sleep(0.5)
            stats = self.engine.stats(info.id)
            return stats.get("memory_usage"), self.engine.inspect(info.id).get("Applied") or {}
        finally:
            with contextlib.suppress(IsoboxError):
                self.engine.remove(info.id, force=True)

    def facts(self, applied: dict[str, Any]) -> dict[str, Any]:
        sample = self.run(["sh", "-c", workloads.FACTS_SCRIPT])
        raw = workloads.parse_facts(sample.text())
        host_kernel = os.uname().release
        kernel = raw.get("kernel", "?")
        shared = kernel == host_kernel
        seccomp = applied.get("Seccomp") or {}
        if self.name == "gvisor":
            syscalls = "gVisor Sentry (user-space kernel); the host sees only runsc's own filtered set"
            kernel_text = f"own: gVisor Sentry (reports {kernel})"
        elif not shared:
            syscalls = "guest kernel (all of its own)"
            kernel_text = f"own: {kernel}"
        else:
            allowed = seccomp.get("syscalls_allowed")
            syscalls = (f"seccomp allow-list of {allowed}" if allowed else
                        f"seccomp {seccomp.get('mode', 'unknown')}")
            kernel_text = f"host's ({kernel})"
        return {"kernel": kernel_text, "kernel_shared": shared, "syscalls": syscalls,
                "capabilities": workloads.cap_count(raw.get("capeff", "")),
                "probes": {name: raw.get(name, "unknown") for name in workloads.PROBES}}


Progress = Callable[[str], None]


def measure_level(runner: Native | Level, command: list[str], repetitions: int, native: dict[str, Any] | None,
                  progress: Progress) -> dict[str, Any]:
    """Everything compare reports for one level; ``native`` is the baseline's result (None: this is it)."""
    first, exits = [], []
    phases: dict[str, list[float]] = {p: [] for p in workloads.PHASES}
    progress(f"{runner.name}: warming up")
    runner.run(command)  # first-use costs (page cache, compiled filters, a platform probe) are not the level's
    for rep in range(repetitions):
        progress(f"{runner.name}: start latency {rep + 1}/{repetitions}")
        sample = runner.run(command)
        exits.append(sample.exit_s)
        progress(f"{runner.name}: cpu, syscalls, file I/O {rep + 1}/{repetitions}")
        bench = runner.run(["sh", "-c", workloads.BENCH_SCRIPT])
        if bench.exit_code != 0:
            raise IsoboxError(f"the probe workload failed at level {runner.name} (exit {bench.exit_code})")
        if bench.first_s is not None:
            first.append(bench.first_s)
        for phase, secs in workloads.phase_durations(bench.markers()).items():
            phases[phase].append(secs)
    progress(f"{runner.name}: memory and isolation facts")
    if isinstance(runner, Native):
        memory: int | None = runner.memory()
        facts = runner.facts()
    else:
        memory, applied = runner.memory()
        facts = runner.facts(applied)
        if not facts["kernel_shared"]:
            where = "Sentry" if runner.name == "gvisor" else "guest kernel"
            facts["probes"] = {k: f"open in the {where} only" if v == "open" else v
                               for k, v in facts["probes"].items()}
        facts["runtime"] = applied.get("Runtime") or applied.get("Accelerator") or None
    result: dict[str, Any] = {
        "available": True,
        "start_first_ms": summary(first),
        "start_exit_ms": summary(exits),
        "exit_code": sample.exit_code,
        "memory_bytes": memory,
        "phases_ms": {p: summary(v) for p, v in phases.items()},
        "facts": facts,
    }
    if native is not None:
        base_mem = native.get("memory_bytes") or 0
        result["memory_added_bytes"] = None if memory is None else max(0, memory - base_mem)
        result["ratios"] = {}
        for phase in workloads.PHASES:
            mine, theirs = result["phases_ms"][phase]["p50"], native["phases_ms"][phase]["p50"]
            result["ratios"][phase] = round(mine / theirs, 2) if mine and theirs else None
    else:
        result["memory_added_bytes"] = 0
        result["ratios"] = {p: 1.0 for p in workloads.PHASES}
    return result
