"""The engine: everything the daemon does, independent of HTTP.

The daemon's routes are thin wrappers around these methods.  Methods are synchronous (the
daemon runs them in its thread pool) except ``wait`` and ``logs``, which are async because
they may block for as long as the workload runs.  Every method raises ``IsoboxError``
subclasses for anything the user can act on.

Workloads are not the daemon's to lose: each has a monitor process that outlives the daemon
and leaves an exit file.  The engine watches monitors through pidfds on the daemon's event
loop and, at start, ``recover()`` re-adopts the live ones and settles the ones that ended.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import os
import secrets
import select
import signal as signals
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from isobox import __version__, names, paths
from isobox.errors import Conflict, InvalidArgument, IsoboxError, NotFound
from isobox.images.store import Image, ImageStore
from isobox.logs import read_entries
from isobox.net.manager import ALIASES, Attachment, NetworkManager
from isobox.runtimes import registry
from isobox.runtimes.base import ExecRequest, Runtime
from isobox.runtimes.container import launch, zygote
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.monitor import ExitStatus
from isobox.runtimes.container.runtime import log_path
from isobox.runtimes.container.zygote import Zygote
from isobox.spec import Isolation, WorkloadSpec
from isobox.state import ContainerRecord, StateStore


@dataclass
class StartInfo:
    id: str
    name: str
    attach_socket: str | None = None  # set when started with attach=True
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExecSpec:
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    interactive: bool = False
    privileged: bool = False


@dataclass
class ExecInfo:
    exec_id: str
    attach_socket: str


def parse_signal(value: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9``, as docker kill -s takes them."""
    text = str(value).strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < signals.NSIG:
            return number
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        with contextlib.suppress(AttributeError):
            return int(getattr(signals.Signals, name))
    raise InvalidArgument(f"invalid signal: {value}")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    delta = max(0, int(now - ts))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= size:
            count = delta // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "Less than a second" if delta < 1 else f"{delta} second{'s' if delta != 1 else ''}"


def _iso(ts: float | None) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e9):09d}Z"


def _make_run_root() -> None:
    """The run root is traversable but not listable (0711): each network's dnsmasq runs as
    nobody and re-reads its hosts file under ``net/``.  Everything else below stays 0700."""
    root = paths.run_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    root.chmod(0o711)
    for sub in ("c", "v", "runsc", "containers"):
        (root / sub).mkdir(exist_ok=True, mode=0o700)
        (root / sub).chmod(0o700)


class Engine:
    def __init__(self, store: StateStore | None = None) -> None:
        paths.state_root().mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_run_root()
        self.store = store or StateStore(paths.database_path())
        self.image_store = ImageStore(self.store)
        self.runtimes: dict[str, Runtime] = registry.load_runtimes()
        self.net = NetworkManager(self.store)
        self._zygote: Zygote | None = None
        if not launch.zygote_active():
            # The daemon starts one before loading its web stack; anyone else gets one here.
            self._zygote = zygote.start()
            launch.use_zygote(self._zygote.spawn)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.RLock()
        self._exited: dict[str, asyncio.Event] = {}
        self._removed: dict[str, asyncio.Event] = {}
        self._final: dict[str, ExitStatus] = {}
        self._starting: set[str] = set()
        self._cpu_samples: dict[str, tuple[float, int]] = {}
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="isobox-sync")

    # -- plumbing -----------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the engine the daemon's event loop, where it watches workload exits."""
        self.loop = loop

    def prewarm(self) -> None:
        """Compile what every container start needs, so the first `run` does not pay for it."""
        from isobox.runtimes.container import caps
        from isobox.runtimes.container.runtime import compile_seccomp
        from isobox.spec import Security

        with contextlib.suppress(IsoboxError):
            compile_seccomp(Security(), caps.resolve([], []))
        from isobox.net import links

        links.index_of("lo")  # pyroute2 takes ~160 ms to import: not on the first run's path

    def close(self) -> None:
        self._syncer.shutdown(wait=True)  # the syncs of runs still pending
        self.store.close()
        if self._zygote is not None:
            launch.use_zygote(None)
            self._zygote.close()

    def _event(self, table: dict[str, asyncio.Event], container_id: str) -> asyncio.Event:
        event = table.get(container_id)
        if event is None:
            event = table[container_id] = asyncio.Event()
        return event

    def _notify(self, table: dict[str, asyncio.Event], container_id: str) -> None:
        if self.loop is None:
            return
        self.loop.call_soon_threadsafe(lambda: self._event(table, container_id).set())

    def _watch(self, container_id: str | None, monitor_pid: int, done_fd: int | None = None) -> None:
        """Call ``_monitor_exited`` when the monitor is done: EOF on its status pipe when we
        started it (that comes before its own teardown), else its pidfd (after a restart)."""
        if self.loop is None:
            if done_fd is not None:
                os.close(done_fd)
            return

        def add() -> None:
            fd = done_fd
            if fd is None:
                try:
                    fd = os.pidfd_open(monitor_pid)
                except ProcessLookupError:
                    self._monitor_exited(container_id, monitor_pid)
                    return
            assert self.loop is not None
            self.loop.add_reader(fd, fired, fd)

        def fired(fd: int) -> None:
            if done_fd is not None:
                with contextlib.suppress(BlockingIOError):
                    if os.read(fd, 4096):
                        return  # not EOF yet
            assert self.loop is not None
            self.loop.remove_reader(fd)
            os.close(fd)
            self._monitor_exited(container_id, monitor_pid)

        self.loop.call_soon_threadsafe(add)

    def _runtime(self, rec: ContainerRecord) -> Runtime:
        return self.runtimes[rec.spec.get("isolation", Isolation.CONTAINER.value)]

    @staticmethod
    def _alive(pid: int | None, start: int | None) -> bool:
        return bool(pid) and sc.process_start_time(pid) == start  # type: ignore[arg-type]

    def _reap(self, pid: int) -> None:
        """Collect a monitor if it is our child (VM and VM-exec monitors are; the zygote's are
        not).  Its status pipe reaches EOF just before it exits, so it may still be running:
        then its pidfd says when (a bare WNOHANG left a zombie per VM in a long-lived daemon)."""
        if pid <= 0:
            return  # waitpid(0) would take any child of our process group
        try:
            if os.waitpid(pid, os.WNOHANG)[0] or self.loop is None:
                return
            fd = os.pidfd_open(pid)
        except (ChildProcessError, ProcessLookupError):
            return
        loop = self.loop

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

        try:
            loop.call_soon_threadsafe(loop.add_reader, fd, exited)
        except RuntimeError:  # the loop is closed (shutting down): init reaps it after us
            os.close(fd)

    def _monitor_exited(self, container_id: str | None, monitor_pid: int) -> None:
        """Settle a container whose monitor has ended: record the exit, clean up, auto-remove."""
        self._reap(monitor_pid)
        if container_id is None:
            return  # an exec's monitor: its client got the exit code
        with self._lock:
            try:
                rec = self.store.find_container(container_id)
            except NotFound:
                return
            if rec.state != "running" or rec.monitor_pid != monitor_pid:
                return
            status = self._runtime(rec).collect_exit(rec) or ExitStatus(
                255, error="the container's monitor ended without recording an exit status",
                finished_at=time.time())
            self.store.update_container(rec.id, durable=False, state="exited", exit_code=status.exit_code,
                                        oom_killed=int(status.oom_killed), error=status.error,
                                        finished_at=status.finished_at or time.time())
            self._final[rec.id] = status
            if not self._alive(rec.monitor_pid, rec.monitor_start):
                self._runtime(rec).cleanup(rec)  # a monitor that died cannot have cleaned up
            self._notify(self._exited, rec.id)
            self._release_network(rec.id)
            if rec.spec.get("auto_remove"):
                self._remove_record(rec)

    def _release_network(self, container_id: str) -> None:
        """The address, DNS name and published ports of a workload that ended.  On the event loop
        it goes to a worker thread (a SQLite commit, a hosts file, nftables when ports were
        published), so that whoever waits for the exit hears of it first; only this start's
        leases are released then, as a restart may come first."""
        held = {lease.link for lease in self.net.leases_of(container_id)}
        if not held:
            return

        def release() -> None:
            with contextlib.suppress(IsoboxError, OSError):
                self.net.detach(container_id, held)

        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False  # a worker thread (stop, rm): it can wait for it
        if on_loop:
            assert self.loop is not None
            self.loop.run_in_executor(None, release)
        else:
            release()

    def _wait_monitor(self, rec: ContainerRecord, timeout: float) -> bool:
        """Block (in a worker thread) until the monitor ends; then settle the container now."""
        if not rec.monitor_pid or not self._alive(rec.monitor_pid, rec.monitor_start):
            self._monitor_exited(rec.id, rec.monitor_pid or 0)
            return True
        try:
            pidfd = os.pidfd_open(rec.monitor_pid)
        except ProcessLookupError:
            self._monitor_exited(rec.id, rec.monitor_pid)
            return True
        try:
            ready = select.select([pidfd], [], [], timeout)[0]
        finally:
            os.close(pidfd)
        if ready:
            self._monitor_exited(rec.id, rec.monitor_pid)
        return bool(ready)

    def recover(self) -> None:
        """Reconcile the database with reality at daemon start (re-adopt, mark exited), then
        the networks: leases, links, DNS and nftables of workloads that are gone."""
        live = set()
        for rec in self.store.containers("running"):
            if rec.monitor_pid and self._alive(rec.monitor_pid, rec.monitor_start):
                self._watch(rec.id, rec.monitor_pid)
                live.add(rec.id)
            else:
                self._monitor_exited(rec.id, rec.monitor_pid or 0)
        try:
            self.net.reconcile(live)
        except (IsoboxError, OSError) as exc:  # e.g. nft missing: containers with --network none still run
            logging.getLogger("isobox.net").warning("networks not reconciled: %s", exc)

    # -- containers ---------------------------------------------------------------------------

    def _image(self, ref: str) -> Image:
        return self.image_store.resolve(ref)

    def create(self, spec: WorkloadSpec) -> StartInfo:
        rec, _image = self._create(spec, durable=True)
        return StartInfo(rec.id, rec.name)

    def _create(self, spec: WorkloadSpec, durable: bool) -> tuple[ContainerRecord, Image]:
        """``durable=False``: the row is committed without an fsync; the caller syncs the store."""
        spec.validate()
        runtime = self.runtimes.get(spec.isolation.value)
        if runtime is None:
            raise InvalidArgument(f"isolation {spec.isolation.value!r} is not available yet",
                                  hint=f"available here: {', '.join(self.runtimes)}")
        self._check_network(spec, runtime)
        image = self._image(spec.image)
        if image.disk and spec.isolation != Isolation.VM:
            raise InvalidArgument(f"image {spec.image} is a VM disk image: run it with --isolation vm")
        runtime.validate(spec, image)
        container_id = secrets.token_hex(32)
        rec = ContainerRecord(id=container_id, name=spec.name or names.generate(), image_id=image.id,
                              image_ref=spec.image, spec=spec.to_dict())
        self.store.add_container(rec, durable)
        return rec, image

    def _check_network(self, spec: WorkloadSpec, runtime: Runtime) -> None:
        if spec.network == "none":
            return
        if spec.network == "host":
            if runtime.network_kind != "veth":
                raise InvalidArgument(f"--network host is for containers, not --isolation {spec.isolation.value}")
            return
        if runtime.network_kind is None:
            if spec.network in ALIASES and not spec.ports:
                return  # this level has loopback only: the default network does not apply
            raise InvalidArgument(f"--isolation {spec.isolation.value} has no isobox networks yet",
                                  hint="use --network none")
        try:
            self.net.resolve(spec.network)
        except NotFound:
            raise InvalidArgument(f"network {spec.network} not found",
                                  hint="isobox network ls lists them; isobox network create makes one") from None

    def _attach_network(self, rec: ContainerRecord, spec: WorkloadSpec) -> Attachment | None:
        kind = self._runtime(rec).network_kind
        if spec.network in ("none", "host") or kind is None:
            return None
        hostnames = list(dict.fromkeys([rec.name, *([spec.hostname] if spec.hostname else []), rec.id[:12]]))
        ports = [dataclasses.asdict(p) for p in spec.ports]
        return self.net.attach(rec.id, spec.network, hostnames, ports, kind)

    def start(self, ref: str, attach: bool = False) -> StartInfo:
        """With attach=True the workload waits to exec until the first client connects to
        ``attach_socket``, so no output is lost."""
        # The engine lock covers the state check and the bookkeeping, not the start itself: a VM
        # boot takes seconds under TCG, and other workloads' exits must be recorded meanwhile.
        with self._lock:
            rec = self.store.find_container(ref)
            if rec.state == "running" and self._alive(rec.pid, rec.pid_start):
                if attach:
                    raise Conflict(f"container {rec.name} is already running")
                return StartInfo(rec.id, rec.name)
            if rec.id in self._starting:
                raise Conflict(f"container {rec.name} is already being started")
            self._starting.add(rec.id)
        return self._start(rec, None, attach)

    def _start(self, rec: ContainerRecord, image: Image | None, attach: bool) -> StartInfo:
        """Start ``rec`` (in ``_starting``); ``image``: a record ``run`` has just made, with its
        image resolved: nothing of an earlier start can be left to wait for or release."""
        try:
            spec = WorkloadSpec.from_dict(rec.spec)
            if image is None:
                image = self.image_store.resolve(rec.image_id)
                self._monitor_gone(rec)  # a restart reuses the cgroup name the last monitor removes
                self.net.detach(rec.id)  # a lease left by a start that failed half-way
            network = self._attach_network(rec, spec)
            try:
                launched, applied, sock = self._runtime(rec).start(rec, spec, image, attach, network)
            except BaseException:
                if network is not None:
                    self.net.start_failed(rec.id)
                raise
            if network is not None:
                applied["Network"] = network.describe()
            with self._lock:
                self.store.update_container(
                    rec.id, durable=False, state="running", pid=launched.pid, pid_start=launched.pid_start,
                    monitor_pid=launched.monitor_pid, monitor_start=launched.monitor_start,
                    exit_code=None, oom_killed=0, error=None, started_at=time.time(), finished_at=None,
                    applied=applied)
                self._final.pop(rec.id, None)
            if self.loop is not None:
                self.loop.call_soon_threadsafe(lambda: self._event(self._exited, rec.id).clear())
            self._watch(rec.id, launched.monitor_pid, launched.done_fd)
            return StartInfo(rec.id, rec.name, sock, list(applied.get("CgroupWarnings", [])))
        finally:
            with self._lock:
                self._starting.discard(rec.id)

    def run(self, spec: WorkloadSpec, attach: bool = False) -> StartInfo:
        """create + start; a failed start removes what create made.

        The new row is committed without an fsync and made durable on a worker thread once
        the workload runs: the fsync (0.6-1 ms on this machine's disk, more on network disks)
        was the largest single cost of a start in the daemon.  What a power loss in between
        could take is the row of a workload that the power loss ended anyway.
        """
        rec, image = self._create(spec, durable=False)
        with self._lock:
            self._starting.add(rec.id)
        try:
            started = self._start(rec, image, attach)
        except BaseException:
            with contextlib.suppress(IsoboxError):
                self.remove(rec.id, force=True)
            raise
        try:
            self._syncer.submit(self._sync_store)
        except RuntimeError:  # the engine is closing (its executor is shut down): sync here
            self._sync_store()
        return started

    def _sync_store(self) -> None:
        try:
            self.store.sync()
        except OSError as exc:
            logging.getLogger("isobox.engine").warning("could not sync the state database: %s", exc)

    def stop(self, ref: str, timeout: int | None = None) -> None:
        rec = self.store.find_container(ref)
        if rec.state != "running":
            return
        grace = timeout if timeout is not None else int(rec.spec.get("stop_timeout", 10))
        with contextlib.suppress(Conflict):
            self._runtime(rec).signal(rec, signals.SIGTERM)
        if not self._wait_monitor(rec, grace):
            with contextlib.suppress(Conflict):
                self._runtime(rec).signal(rec, signals.SIGKILL)
            self._wait_monitor(rec, 30)

    def kill(self, ref: str, signal: str | int = "KILL") -> None:
        number = parse_signal(signal)
        rec = self.store.find_container(ref)
        if rec.state != "running":
            raise Conflict(f"cannot kill container {rec.name}: container is not running")
        self._runtime(rec).signal(rec, number)

    def remove(self, ref: str, force: bool = False) -> None:
        rec = self.store.find_container(ref)
        if rec.state == "running":
            if not force:
                raise Conflict(f"cannot remove container {rec.name}: container is running",
                               hint="stop the container before removing or force remove (rm -f)")
            with contextlib.suppress(Conflict):
                self._runtime(rec).signal(rec, signals.SIGKILL)
            self._wait_monitor(rec, 30)
            with contextlib.suppress(NotFound):
                rec = self.store.find_container(rec.id)
        self._remove_record(rec)

    def _monitor_gone(self, rec: ContainerRecord, timeout: float = 10.0) -> None:
        """Wait until the monitor has finished its own cleanup (it reports the exit first)."""
        if not rec.monitor_pid or not self._alive(rec.monitor_pid, rec.monitor_start):
            return
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(rec.monitor_pid)
            try:
                select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)

    def _remove_record(self, rec: ContainerRecord) -> None:
        self._monitor_gone(rec)
        with self._lock:
            self._runtime(rec).remove(rec)
            with contextlib.suppress(IsoboxError, OSError):
                self.net.detach(rec.id)
            self.store.delete_container(rec.id)
            self._cpu_samples.pop(rec.id, None)
            self._notify(self._removed, rec.id)

    def _status_text(self, rec: ContainerRecord, now: float) -> str:
        if rec.state == "running":
            return f"Up {_ago(rec.started_at, now)}"
        if rec.state == "exited":
            return f"Exited ({rec.exit_code}) {_ago(rec.finished_at, now)} ago"
        return "Created"

    def list(self, all: bool = False) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for rec in self.store.containers():
            if not all and rec.state != "running":
                continue
            argv = (rec.spec.get("entrypoint") or []) + (rec.spec.get("command") or [])
            out.append({
                "Id": rec.id, "Names": [rec.name], "Image": rec.image_ref, "ImageID": rec.image_id,
                "Command": " ".join(argv), "Created": rec.created_at, "State": rec.state,
                "Status": self._status_text(rec, now), "ExitCode": rec.exit_code,
                "Isolation": rec.spec.get("isolation", "container"),
            })
        return out

    def inspect(self, ref: str) -> dict[str, Any]:
        rec = self.store.find_container(ref)
        spec = rec.spec
        res, sec = spec.get("resources", {}), spec.get("security", {})
        argv = rec.applied.get("Argv") or (spec.get("entrypoint") or []) + (spec.get("command") or [])
        running = rec.state == "running"
        return {
            "Id": rec.id,
            "Name": rec.name,
            "Created": _iso(rec.created_at),
            "Path": argv[0] if argv else "",
            "Args": argv[1:],
            "State": {
                "Status": rec.state, "Running": running, "Pid": rec.pid if running else 0,
                "ExitCode": rec.exit_code or 0, "OOMKilled": rec.oom_killed, "Error": rec.error or "",
                "StartedAt": _iso(rec.started_at), "FinishedAt": _iso(rec.finished_at),
            },
            "Image": rec.image_id,
            "ImageName": rec.image_ref,
            "Isolation": spec.get("isolation", "container"),
            "LogPath": str(log_path(rec.id)),
            "Config": {
                "Hostname": spec.get("hostname") or rec.id[:12], "User": spec.get("user") or "",
                "Env": [f"{k}={v}" for k, v in (spec.get("env") or {}).items()],
                "Cmd": spec.get("command"), "Entrypoint": spec.get("entrypoint"),
                "WorkingDir": spec.get("workdir") or "", "Tty": spec.get("tty", False),
                "OpenStdin": spec.get("interactive", False), "StopTimeout": spec.get("stop_timeout"),
            },
            "HostConfig": {
                "Memory": res.get("memory") or 0,
                "NanoCpus": int((res.get("cpus") or 0) * 1e9),
                "PidsLimit": res.get("pids_limit") or 0,
                "CapAdd": sec.get("cap_add", []), "CapDrop": sec.get("cap_drop", []),
                "SecurityOpt": [f"seccomp={sec.get('seccomp', 'default')}",
                                f"no-new-privileges={str(sec.get('no_new_privileges', True)).lower()}"],
                "ReadonlyRootfs": spec.get("read_only", False), "Init": spec.get("init", False),
                "AutoRemove": spec.get("auto_remove", False), "NetworkMode": spec.get("network", "none"),
                "PortBindings": {f"{p['container_port']}/{p['protocol']}": [
                    {"HostIp": p["host_ip"], "HostPort": str(p["host_port"] or "")}] for p in spec.get("ports", [])},
                "Binds": [f"{m['source']}:{m['target']}{':ro' if m.get('readonly') else ''}"
                          for m in spec.get("mounts", [])],
            },
            "NetworkSettings": self.net.describe(rec.id),
            "Applied": rec.applied,
            "Monitor": {"Pid": rec.monitor_pid if running else 0},
        }

    async def wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        """Returns ``{"StatusCode": int, "OOMKilled": bool, "Error": str|None}``.
        condition: "not-running" (default) or "removed" (also waits for auto-removal)."""
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid wait condition {condition!r}")
        rec = self.store.find_container(ref)
        if condition == "next-exit" or rec.state == "running":
            await self._event(self._exited, rec.id).wait()
        if condition == "removed":
            with contextlib.suppress(NotFound):
                self.store.find_container(rec.id)
                await self._event(self._removed, rec.id).wait()
        final = self._final.get(rec.id)
        if final is None:
            with contextlib.suppress(NotFound):
                rec = self.store.find_container(rec.id)
            final = ExitStatus(rec.exit_code or 0, rec.oom_killed, rec.error)
        return {"StatusCode": final.exit_code, "OOMKilled": final.oom_killed, "Error": final.error}

    async def logs(self, ref: str, follow: bool = False, tail: int | None = None,
                   timestamps: bool = False) -> AsyncIterator[tuple[int, bytes]]:
        """Async iterator of (stream, data): stream 1 stdout, 2 stderr."""
        rec = self.store.find_container(ref)
        path = log_path(rec.id)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - held across awaits
        except FileNotFoundError:
            return
        with fh:
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            entries = list(read_entries(data[:cut]))
            pending = data[cut:]
            if tail is not None and tail >= 0:
                entries = entries[-tail:] if tail else []
            for entry in entries:
                yield entry.stream, (entry.time.encode() + b" " if timestamps else b"") + entry.data
            while follow:
                chunk = fh.read()
                if not chunk:
                    try:
                        state = self.store.find_container(rec.id).state
                    except NotFound:
                        return
                    if state != "running":
                        chunk = fh.read()
                        if not chunk:
                            return
                    else:
                        await asyncio.sleep(0.05)
                        continue
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                for entry in read_entries(data[:cut]):
                    yield entry.stream, (entry.time.encode() + b" " if timestamps else b"") + entry.data

    def exec(self, ref: str, spec: ExecSpec) -> ExecInfo:
        if not spec.command:
            raise InvalidArgument("no command given to exec")
        rec = self.store.find_container(ref)
        if rec.state != "running":
            raise Conflict(f"container {rec.name} is not running")
        wspec = WorkloadSpec.from_dict(rec.spec)
        image = self.image_store.resolve(rec.image_id)
        request = ExecRequest(spec.command, spec.env, spec.workdir, spec.user, spec.tty, spec.interactive,
                              spec.privileged)
        launched, sock = self._runtime(rec).exec(rec, wspec, image, request)
        self._watch(None, launched.monitor_pid, launched.done_fd)
        return ExecInfo(secrets.token_hex(16), sock)

    def stats(self, ref: str) -> dict[str, Any]:
        rec = self.store.find_container(ref)
        if rec.state != "running":
            raw: dict[str, Any] = {}
        else:
            raw = self._runtime(rec).stats(rec)
            now = time.monotonic()
            usage = int(raw.get("cpu_usage_ns") or 0)
            last = self._cpu_samples.get(rec.id)
            if last is None:
                time.sleep(0.1)
                last = (now, usage)
                raw = self._runtime(rec).stats(rec) or raw
                now, usage = time.monotonic(), int(raw.get("cpu_usage_ns") or 0)
            self._cpu_samples[rec.id] = (now, usage)
            elapsed = max(now - last[0], 1e-6)
            raw["cpu_percent"] = round(100.0 * (usage - last[1]) / 1e9 / elapsed, 2)
        return {"Id": rec.id, "Name": rec.name, "State": rec.state, **raw}

    # -- images -------------------------------------------------------------------------------

    def images(self) -> builtins.list[dict[str, Any]]:
        return [image.to_dict() for image in self.image_store.list()]

    def remove_image(self, ref: str, force: bool = False) -> builtins.list[str]:
        image = self.image_store.resolve(ref)
        in_use = self.store.containers_using_image(image.id)
        if force and in_use and self.image_store.resolve(ref).id == image.id:
            # podman rmi -f: the containers go with the image.
            for name in in_use:
                self.remove(name, force=True)
            in_use = []
        removed = self.image_store.remove(ref, force=force, in_use_by=in_use)
        self._collect_vm_disks()
        return removed

    def build_image(self, kind: str, tag: str | None = None, include: builtins.list[str] | None = None,
                    progress: Callable[[str], None] | None = None, bootable: bool = False) -> dict[str, Any]:
        """``busybox`` or ``debian:SUITE`` (mmdebstrap; ``include`` adds packages); ``bootable``:
        a Debian system disk that VMs boot by firmware (a VM-only image)."""
        report = progress or self._silent
        if bootable:
            if kind != "debian" and not kind.startswith("debian:"):
                raise InvalidArgument(f"--bootable builds Debian system disks, not {kind!r}",
                                      hint="isobox image build debian:bookworm --bootable")
            from isobox.images import bootdisk

            return bootdisk.build(self.image_store, kind, include or [], tag, report).to_dict()
        if kind == "busybox":
            if include:
                raise InvalidArgument("--include is for debian images", hint="isobox image build debian:bookworm --include PKG")
            return self.image_store.build_busybox(tag or "busybox:latest", report).to_dict()
        if kind.startswith("debian:") or kind == "debian":
            from isobox.images import debian

            return debian.build(self.image_store, kind, include or [], tag, report).to_dict()
        raise InvalidArgument(f"unknown image kind {kind!r}",
                              hint="isobox image build busybox | debian:bookworm | debian:trixie")

    @staticmethod
    def _silent(_: str) -> None:
        pass

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return self.image_store.resolve(ref).to_dict()

    def image_history(self, ref: str) -> builtins.list[dict[str, Any]]:
        image = self.image_store.resolve(ref)
        return [{"Created": h.get("created", ""), "CreatedBy": h.get("created_by", ""),
                 "Comment": h.get("comment", ""), "EmptyLayer": bool(h.get("empty_layer"))}
                for h in reversed(image.history)]

    def tag_image(self, ref: str, target: str) -> dict[str, Any]:
        return self.image_store.tag(ref, target).to_dict()

    def prune_images(self, all_unused: bool = False) -> dict[str, Any]:
        in_use = {rec.image_id for rec in self.store.containers()}
        pruned = self.image_store.prune(all_unused=all_unused, in_use=in_use)
        self._collect_vm_disks()
        return pruned

    def _collect_vm_disks(self) -> None:
        from isobox.images import vmdisk

        vmdisk.collect({image.id for image in self.image_store.list()})

    def load_images(self, archive: str, progress: Callable[[str], None] | None = None) -> builtins.list[dict[str, Any]]:
        from pathlib import Path

        from isobox.images import archive as archives

        return [i.to_dict() for i in archives.load(self.image_store, Path(archive), progress or self._silent)]

    def save_image(self, ref: str, output: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        from pathlib import Path

        from isobox.images import archive as archives

        return archives.save(self.image_store, ref, Path(output), progress or self._silent).to_dict()

    def import_disk(self, path: str, name: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """A foreign raw/qcow2 disk or ISO as a VM-only image named ``name``."""
        from pathlib import Path

        from isobox.images import diskimport

        return diskimport.import_disk(self.image_store, Path(path), name, progress or self._silent).to_dict()

    def build_dockerfile(self, request: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        from isobox.images import dockerfile

        return dockerfile.build(self, request, progress or self._silent).to_dict()

    # -- system -------------------------------------------------------------------------------

    def system_info(self) -> dict[str, Any]:
        from isobox import sysinfo

        info = sysinfo.collect()
        containers = self.store.containers()
        info["isobox"] = {
            "version": __version__,
            "state_root": str(paths.state_root()),
            "run_root": str(paths.run_root()),
            "containers": len(containers),
            "running": sum(1 for c in containers if c.state == "running"),
            "images": len(self.image_store.list()),
            "isolation_levels": {name: rt.host_facts() for name, rt in self.runtimes.items()},
        }
        return info


__all__ = ["Engine", "ExecInfo", "ExecSpec", "StartInfo", "parse_signal", "sc"]
