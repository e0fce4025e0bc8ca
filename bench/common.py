"""Helpers shared by the benchmarks: statistics, tables, machine facts, a private isobox.

Every benchmark runs against its own isobox: state and run roots under a short ``/tmp/ibx-bench-*``
directory (unix socket paths must fit in 108 bytes), its own cgroup parent, its own daemon.  The
context managers here undo all of it -- containers, daemon, cgroups, files -- on the way out,
including on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin" / "isobox").exists() else Path(sys.executable).parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024


# -- statistics and output ------------------------------------------------------------------------

def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    n: int
    p50: float
    p90: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(values), percentile(values, 50), percentile(values, 90), min(values), max(values),
                   sum(values) / len(values))


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table (readable in a terminal, pastes into BENCHMARKS.md as is).

    ``align``: one letter per column, ``l`` or ``r`` (default: first column left, the rest right).
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def json_line(data: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return None if math.isnan(v) else round(v, 3)
        return v

    return json.dumps({k: clean(v) for k, v in data.items()})


# -- machine facts ----------------------------------------------------------------------------------

def _first_line(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def cgroup_version() -> str:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "v2"
    if (CGROUP_ROOT / "unified").is_dir() and (CGROUP_ROOT / "memory").is_dir():
        return "v1 (hybrid)"
    return "v1"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_facts() -> dict[str, str]:
    os_name = ""
    with contextlib.suppress(OSError), open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    mem = meminfo()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "os": os_name,
        "kernel": platform.release(),
        "cpus": f"{os.cpu_count()} x {cpu_model()}",
        "memory": f"{mem.get('MemTotal', 0) / (1 << 30):.1f} GiB total, "
                  f"{mem.get('MemAvailable', 0) / (1 << 30):.1f} GiB available",
        "load (1/5/15 min)": " ".join(_first_line("/proc/loadavg").split()[:3]),
        "cgroups": cgroup_version(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "isobox": isobox_revision(),
    }


def isobox_revision() -> str:
    """The commit measured, and whether isobox/ had uncommitted changes (read-only git calls)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [line for line in git("status", "--porcelain", "--", "isobox").splitlines() if line.strip()]
    return f"git {head}" + (f" + {len(dirty)} uncommitted paths under isobox/" if dirty else "")


def compile_isobox() -> None:
    """Byte-compile isobox, as its first run does for a user: with PYTHONDONTWRITEBYTECODE set
    (or a read-only checkout) every CLI start would compile its modules again, ~30 ms here."""
    import compileall

    compileall.compile_dir(str(REPO / "isobox"), quiet=1)


def print_facts(title: str) -> None:
    compile_isobox()
    print(f"# {title}")
    for key, value in machine_facts().items():
        print(f"- {key}: {value}")
    print()


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.strip().splitlines()[0] if out.strip() else "?"


# -- processes and memory ---------------------------------------------------------------------------

def pss_bytes(pid: int) -> int | None:
    """Proportional set size from /proc/PID/smaps_rollup (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def children_of(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            out.append(int(entry))
    return out


# -- signals --------------------------------------------------------------------------------------

def sigterm_as_interrupt() -> None:
    """Make SIGTERM (and SIGINT, even if inherited as ignored) unwind like Ctrl-C, so ``finally``
    blocks clean up."""
    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    # A shell starts background jobs with SIGINT ignored; Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Let a clean-up run to its end even if Ctrl-C is pressed again."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# -- private roots, cgroups, daemon -----------------------------------------------------------------

@contextlib.contextmanager
def bench_dir(prefix: str = "ibx-bench") -> Iterator[Path]:
    """A fresh short directory ``/tmp/<prefix>-XXXXXX``, removed on exit."""
    base = Path(f"/tmp/{prefix}-{secrets.token_hex(3)}")
    base.mkdir(mode=0o700)
    try:
        yield base
    finally:
        with no_interrupts():
            unmount_under(base)
            shutil.rmtree(base, ignore_errors=True)


def unmount_under(base: Path) -> None:
    """Detach anything a failed run left mounted below ``base`` (deepest first)."""
    from isobox.runtimes.container.syscalls import detach_mounts_under

    detach_mounts_under(str(base))


def isobox_env(base: Path, cgroup_parent: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ISOBOX_ROOT=str(base / "root"), ISOBOX_RUN=str(base / "run"),
               ISOBOX_CGROUP_PARENT=cgroup_parent)
    env.pop("ISOBOX_SOCKET", None)
    return env


def cgroup_dirs(parent: str) -> list[Path]:
    """``<hierarchy>/<parent>`` in every mounted hierarchy where it exists."""
    parts = [p for p in parent.split("/") if p]
    if not parts or not CGROUP_ROOT.is_dir():
        return []
    out = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        path = hierarchy.joinpath(*parts)
        if path.is_dir():
            out.append(path)
    return out


def _cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    for procs in [path / "cgroup.procs", *path.rglob("cgroup.procs")]:
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(x) for x in procs.read_text().split())
    return sorted(set(pids))


def remove_cgroup_parent(parent: str, kill: bool = True) -> list[str]:
    """Kill what is left in ``parent`` (it is ours: the name is unique to this run), then remove
    the parent and its children in every hierarchy.  Returns what could not be removed."""
    left: list[str] = []
    dirs = cgroup_dirs(parent)
    if kill:
        for path in dirs:
            for pid in _cgroup_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for path in dirs:
        for attempt in range(50):
            try:
                for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    child.rmdir()
                path.rmdir()
                break
            except FileNotFoundError:
                continue
            except OSError as exc:
                if attempt == 49:
                    left.append(f"{path}: {exc.strerror}")
                time.sleep(0.02)
    return left


def socket_up(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


@dataclass
class Daemon:
    """A private ``isoboxd`` with its own roots and cgroup parent."""

    base: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def cgroup_parent(self) -> str:
        return self.env["ISOBOX_CGROUP_PARENT"]

    @property
    def socket(self) -> Path:
        return Path(self.env["ISOBOX_RUN"]) / "isobox.sock"

    @property
    def log_path(self) -> Path:
        return self.base / "isoboxd.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(VENV_BIN / "isobox"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"isobox {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def start(self, timeout: float = 30) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([str(VENV_BIN / "isoboxd")], env=self.env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not socket_up(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"isoboxd did not start: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def remove_all(self) -> None:
        ids = self.cli("ps", "-aq", check=False).stdout.split()
        for start in range(0, len(ids), 50):
            chunk = ids[start:start + 50]
            res = self.cli("rm", "-f", *chunk, check=False, timeout=300)
            if res.returncode != 0:
                self.problems.append(f"isobox rm -f failed ({res.returncode}): {res.stderr.strip()[:300]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.problems.append("isoboxd did not stop within 15 s of SIGTERM; killed")
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def private_daemon(base: Path, name: str = "d", build_busybox: bool = True) -> Iterator[Daemon]:
    """Start ``isoboxd`` on roots under ``base/<name>``; on exit remove every container, stop the
    daemon and remove its cgroup parent (the caller's ``bench_dir`` removes the files).

    It runs in a network namespace of its own, as the tests' daemons: a daemon owns the default
    network (bridge isobox0, 10.213.0.1) of its namespace, and the user's own isobox may hold
    the host's.  What a workload costs is the same in either."""
    root = base / name
    root.mkdir(mode=0o700)
    env = isobox_env(root, f"{base.name}-{name}")
    with netns(f"{base.name}-{name}") as namespace:
        env["ISOBOX_NETNS"] = namespace
        daemon = Daemon(root, env)
        try:
            daemon.start()
            if build_busybox:
                daemon.cli("image", "build", "busybox", timeout=300)
            yield daemon
        finally:
            with no_interrupts():
                if daemon.proc is not None and daemon.proc.poll() is None:
                    with contextlib.suppress(Exception):
                        daemon.remove_all()
                daemon.stop()
                # Or its namespace lives on through it.
                from isobox.net import dns

                dns.stop_all(root / "run")
                left = remove_cgroup_parent(daemon.cgroup_parent)
                daemon.problems.extend(f"cgroup not removed: {x}" for x in left)
                for problem in daemon.problems:
                    print(f"warning: {problem}", file=sys.stderr)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A fresh network namespace (loopback up), deleted on exit; yields its path."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield f"/run/netns/{name}"
    finally:
        with no_interrupts():
            proc = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"warning: ip netns delete {name}: {proc.stderr.strip()}", file=sys.stderr)


def busybox_layer(root: Path) -> Path:
    """The (single) unpacked layer of the busybox image under an isobox state root."""
    layers = sorted((root / "images" / "layers").iterdir())
    if len(layers) != 1:
        raise RuntimeError(f"expected one image layer under {root}, found {len(layers)}")
    return layers[0]


def remove_all_workloads(engine: Any) -> list[str]:
    """Force-remove every workload of an in-process engine and close it; what failed, as text
    (a benchmark reports its cleanup problems rather than stopping at the first)."""
    problems = []
    for item in engine.list(all=True):
        try:
            engine.remove(item["Id"], force=True)
        except Exception as exc:  # noqa: BLE001 - report, keep cleaning
            problems.append(f"engine remove {item['Id'][:12]}: {exc}")
    engine.close()
    return problems
