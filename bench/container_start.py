"""Container start latency: isobox against runc, podman and a bare unshare, in one run.

Rows, each timed as wall time of one create -> exit of ``/bin/true`` on the busybox rootfs:

  engine   in-process ``Engine.run()`` + ``await Engine.wait()`` (private roots, own cgroup parent);
           the container is removed afterwards, untimed
  cli      the whole ``isobox run --rm busybox true`` process against a private ``isoboxd``
  runc     ``runc run --bundle B ID``; B's rootfs is a ``cp -a`` of the busybox image layer,
           config from ``runc spec`` (terminal off, args /bin/true, writable root; runc's default
           pid, network, ipc, uts and mount namespaces)
  podman   ``podman --runtime runc run --rm --network none --ulimit ... --rootfs DIR true`` with
           private storage (``--root/--runroot/--tmpdir``), cgroupfs, file events
  unshare  ``unshare -fmuipn --mount-proc true``: the floor (namespaces, a fork, an exec)

Repetitions are interleaved (one of each row per round) so drift in machine load hits every row
alike; each row is warmed up first.  Bars (../shared/DESIGN.md): engine p50 <= 10 ms and <= 0.5x
runc; CLI <= 0.5x podman.  The last line of output is one JSON object.

Usage: .venv/bin/python bench/container_start.py [--reps N] [--warmup N] [--only engine,runc,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    VENV_BIN,
    Summary,
    bench_dir,
    busybox_layer,
    fmt,
    json_line,
    no_interrupts,
    print_facts,
    private_daemon,
    ratio,
    remove_all_workloads,
    remove_cgroup_parent,
    sigterm_as_interrupt,
    table,
    tool_version,
)

ROWS = ("engine", "cli", "runc", "podman", "unshare")
DESCRIPTIONS = {
    "engine": "Engine.run + await wait (in-process)",
    "cli": "isobox run --rm --network none busybox true",
    "runc": "runc run (bundle, cp -a rootfs)",
    "podman": "podman --runtime runc run --rm --rootfs",
    "unshare": "unshare -fmuipn --mount-proc true",
}
ENGINE_BAR_MS = 10.0
ENGINE_VS_RUNC_BAR = 0.5
CLI_VS_PODMAN_BAR = 0.5


@dataclass
class Row:
    name: str
    once: Callable[[], Awaitable[float | None]]  # its own timing (s), or None: time the call
    samples: list[float] = field(default_factory=list)
    error: str | None = None


class CommandFailed(Exception):
    pass


def run_quiet(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> None:
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=timeout)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CommandFailed(f"exit {proc.returncode}: {err[-1] if err else '(no stderr)'}")


# -- the engine, in process -----------------------------------------------------------------------

class EngineRow:
    def __init__(self, base: Path) -> None:
        self.root = base / "e"
        self.root.mkdir(mode=0o700)
        self.cgroup_parent = f"{base.name}-e"
        os.environ.update(ISOBOX_ROOT=str(self.root / "root"), ISOBOX_RUN=str(self.root / "run"),
                          ISOBOX_CGROUP_PARENT=self.cgroup_parent)
        os.environ.pop("ISOBOX_SOCKET", None)
        from isobox.engine import Engine
        from isobox.spec import WorkloadSpec

        self.spec_type = WorkloadSpec
        self.engine = Engine()  # spawns its zygote (a fresh interpreter)
        self.engine.build_image("busybox")
        self.layer = busybox_layer(self.root / "root")

    async def once(self) -> float:
        loop = asyncio.get_running_loop()
        if self.engine.loop is not loop:
            self.engine.bind_loop(loop)
        start = time.perf_counter()
        # no network, as runc and podman (--network none) here; bench/network.py measures what one adds
        info = self.engine.run(self.spec_type(image="busybox", command=["/bin/true"], network="none"))
        result = await self.engine.wait(info.id)
        elapsed = time.perf_counter() - start
        self.engine.remove(info.id)
        if result["StatusCode"] != 0:
            raise CommandFailed(f"exit {result['StatusCode']}: {result.get('Error')}")
        return elapsed  # without the remove

    def close(self) -> list[str]:
        problems = remove_all_workloads(self.engine)
        problems.extend(f"cgroup not removed: {x}" for x in remove_cgroup_parent(self.cgroup_parent))
        return problems


# -- peers ---------------------------------------------------------------------------------------

def make_runc_bundle(base: Path, layer: Path) -> tuple[Path, Path, str]:
    bundle = base / "runc"
    bundle.mkdir()
    subprocess.run(["cp", "-a", str(layer), str(bundle / "rootfs")], check=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["root"]["readonly"] = False
    cgroup_parent = f"{base.name}-runc"
    config["linux"]["cgroupsPath"] = f"/{cgroup_parent}/c"
    config_path.write_text(json.dumps(config, indent=2))
    state = base / "runc-state"
    state.mkdir()
    return bundle, state, cgroup_parent


def podman_argv(base: Path, rootfs: Path, cgroup_parent: str) -> list[str]:
    pod = base / "podman"
    return [
        "podman", "--root", str(pod / "root"), "--runroot", str(pod / "runroot"), "--tmpdir", str(pod / "tmp"),
        "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc",
        "--network-config-dir", str(pod / "networks"),
        # --rootfs is a boolean flag and the rootfs path the first positional argument: every
        # option must come before it, or it becomes the container's command line.
        "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        "--cgroup-parent", f"/{cgroup_parent}", "--rootfs", str(rootfs), "true",
    ]


# -- the run --------------------------------------------------------------------------------------

async def measure(rows: list[Row], reps: int, warmup: int) -> None:
    for row in rows:
        try:
            for _ in range(warmup):
                await row.once()
        except (CommandFailed, OSError, subprocess.SubprocessError, RuntimeError) as exc:
            row.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CommandFailed) else str(exc)
            print(f"  {row.name}: FAILED during warm-up: {row.error}", file=sys.stderr)
    live = [r for r in rows if r.error is None]
    next_report = time.monotonic() + 10
    for rep in range(reps):
        for row in live:
            if row.error is not None:
                continue
            start = time.perf_counter()
            try:
                timed = await row.once()
            except (CommandFailed, OSError, subprocess.SubprocessError, RuntimeError) as exc:
                row.error = f"rep {rep}: {exc}"
                print(f"  {row.name}: FAILED: {row.error}", file=sys.stderr)
                continue
            elapsed = time.perf_counter() - start if timed is None else timed
            row.samples.append(elapsed * 1000)
        await asyncio.sleep(0)  # lets a Ctrl-C (asyncio.run cancels the task) through
        if time.monotonic() > next_report:
            print(f"  ... {rep + 1}/{reps} rounds", file=sys.stderr)
            next_report = time.monotonic() + 10


def report(rows: list[Row], reps: int, layer: str) -> dict[str, Any]:
    stats = {r.name: Summary.of(r.samples) for r in rows}
    lines = []
    for r in rows:
        s = stats[r.name]
        note = r.error or ""
        if r.error and r.samples:
            note = f"stopped early: {r.error}"
        lines.append([r.name, DESCRIPTIONS[r.name], s.n, fmt(s.p50), fmt(s.p90), fmt(s.min), fmt(s.max), note])
    print(table(["row", "what", "n", "p50 ms", "p90 ms", "min ms", "max ms", "note"], lines, "llrrrrrl"))
    print()

    def p50(name: str) -> float | None:
        s = stats.get(name)
        return s.p50 if s is not None and s.n else None

    def p90(name: str) -> float | None:
        s = stats.get(name)
        return s.p90 if s is not None and s.n else None

    r_engine = ratio(p50("engine"), p50("runc"))
    r_cli = ratio(p50("cli"), p50("podman"))
    engine_p50 = p50("engine")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    bars = [
        ["engine p50 <= 10 ms", fmt(engine_p50), verdict(None if engine_p50 is None else engine_p50 <= ENGINE_BAR_MS)],
        ["engine / runc <= 0.5 (p50)", fmt(r_engine, 3),
         verdict(None if r_engine is None else r_engine <= ENGINE_VS_RUNC_BAR)],
        ["cli / podman <= 0.5 (p50)", fmt(r_cli, 3), verdict(None if r_cli is None else r_cli <= CLI_VS_PODMAN_BAR)],
    ]
    extra = [
        ["engine / unshare (p50)", fmt(ratio(p50("engine"), p50("unshare")), 2), ""],
        ["cli / runc (p50)", fmt(ratio(p50("cli"), p50("runc")), 2), ""],
    ]
    print(table(["bar", "measured", "verdict"], bars + extra, "lrl"))
    print()
    print(f"rootfs: busybox image layer {layer[:12]} (engine and daemon build it from busybox-static; "
          "runc and podman run a cp -a copy of it)")
    return {
        "engine_p50_ms": engine_p50, "engine_p90_ms": p90("engine"), "cli_p50_ms": p50("cli"),
        "runc_p50_ms": p50("runc"), "podman_p50_ms": p50("podman"), "unshare_p50_ms": p50("unshare"),
        "ratio_engine_vs_runc": r_engine, "ratio_cli_vs_podman": r_cli, "reps": reps,
    }


async def bench(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    wanted = args.only
    problems: list[str] = []
    cleanups: list[Callable[[], None]] = []
    try:
        print("setting up: engine, busybox image, daemon, runc bundle, podman rootfs ...", file=sys.stderr)
        engine = EngineRow(base)
        cleanups.append(lambda: problems.extend(engine.close()))
        rows: list[Row] = []
        if "engine" in wanted:
            rows.append(Row("engine", engine.once))
        with contextlib.ExitStack() as stack:
            if "cli" in wanted:
                daemon = stack.enter_context(private_daemon(base, "d"))
                d_layer = busybox_layer(Path(daemon.env["ISOBOX_ROOT"]))
                if d_layer.name != engine.layer.name:
                    problems.append(f"daemon's busybox layer {d_layer.name[:12]} differs from the engine's")
                cli_argv = [str(VENV_BIN / "isobox"), "run", "--rm", "--network", "none", "busybox", "true"]

                async def cli_once() -> None:
                    run_quiet(cli_argv, env=daemon.env)

                rows.append(Row("cli", cli_once))
            if "runc" in wanted:
                bundle, state, runc_cg = make_runc_bundle(base, engine.layer)
                stack.callback(lambda: problems.extend(
                    f"cgroup not removed: {x}" for x in remove_cgroup_parent(runc_cg)))
                counter = iter(range(1 << 30))

                async def runc_once() -> None:
                    cid = f"ibxb-{next(counter)}"
                    try:
                        run_quiet(["runc", "--root", str(state), "run", "--bundle", str(bundle), cid])
                    except CommandFailed:
                        subprocess.run(["runc", "--root", str(state), "delete", "-f", cid],
                                       capture_output=True, check=False)
                        raise

                def runc_leftovers() -> None:
                    out = subprocess.run(["runc", "--root", str(state), "list", "-q"], capture_output=True,
                                         text=True, check=False).stdout.split()
                    for cid in out:
                        subprocess.run(["runc", "--root", str(state), "delete", "-f", cid],
                                       capture_output=True, check=False)

                stack.callback(runc_leftovers)
                rows.append(Row("runc", runc_once))
            if "podman" in wanted:
                pod_rootfs = base / "podman" / "rootfs"
                pod_rootfs.parent.mkdir()
                subprocess.run(["cp", "-a", str(engine.layer), str(pod_rootfs)], check=True)
                pod_cg = f"{base.name}-podman"
                pod_argv = podman_argv(base, pod_rootfs, pod_cg)
                stack.callback(lambda: problems.extend(
                    f"cgroup not removed: {x}" for x in remove_cgroup_parent(pod_cg)))
                stack.callback(host_state_guard(PODMAN_HOST_STATE))  # runs last (LIFO)
                stack.callback(lambda: podman_cleanup(pod_argv))

                async def podman_once() -> None:
                    run_quiet(pod_argv)

                rows.append(Row("podman", podman_once))
            if "unshare" in wanted:
                async def unshare_once() -> None:
                    run_quiet(["unshare", "-fmuipn", "--mount-proc", "true"])

                rows.append(Row("unshare", unshare_once))

            rows.sort(key=lambda r: ROWS.index(r.name))
            print(f"measuring: {args.warmup} warm-up + {args.reps} interleaved rounds of "
                  f"{', '.join(r.name for r in rows)}", file=sys.stderr)
            started = time.monotonic()
            await measure(rows, args.reps, args.warmup)
            print(f"measured in {time.monotonic() - started:.0f} s", file=sys.stderr)
            print()
            summary = report(rows, args.reps, engine.layer.name)
        return summary
    finally:
        with no_interrupts():
            for fn in reversed(cleanups):
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"clean-up: {exc}")
            for problem in problems:
                print(f"warning: {problem}", file=sys.stderr)


# Podman (4.3, rootful) creates its IPAM database here even with --network none; no flag moves it.
PODMAN_HOST_STATE = Path("/run/containers/networks/ipam.db")


def host_state_guard(path: Path) -> Callable[[], None]:
    """Remove ``path`` (and the parent directories made for it) afterwards if it does not exist now."""
    if path.exists():
        return lambda: None
    missing = [p for p in (path.parent, path.parent.parent) if not p.exists()]

    def undo() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for directory in missing:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: never what someone else put there

    return undo


def podman_cleanup(argv: list[str]) -> None:
    """Remove whatever a failed ``podman run --rm`` left in the private storage."""
    prefix = argv[: argv.index("run")]
    subprocess.run([*prefix, "rm", "-af", "-t", "0"], capture_output=True, check=False, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="timed rounds (one run of every row each)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each row first")
    parser.add_argument("--only", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)} (the engine is always set up)")
    args = parser.parse_args()
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    if unknown := args.only - set(ROWS):
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("container_start.py needs root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    print_facts("container start: isobox vs runc vs podman")
    for tool, argv in (("runc", ["runc", "--version"]), ("podman", ["podman", "--version"]),
                       ("unshare", ["unshare", "--version"])):
        print(f"- {tool}: {tool_version(argv)}")
    print(f"- reps: {args.reps} interleaved rounds after {args.warmup} warm-up runs per row")
    print()
    try:
        with bench_dir() as base:
            summary = asyncio.run(bench(base, args))
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    print(json_line(summary))
    return 0


if __name__ == "__main__":
    if shutil.which("runc") is None:
        print("warning: runc not found; its row will fail", file=sys.stderr)
    sys.exit(main())
