"""``--isolation gvisor``: the workload runs on gVisor's Sentry, a kernel in user space.

isobox writes the OCI bundle (``bundle.py``) and runs ``runsc run`` under a monitor that
outlives the daemon (``monitor.py``), so logs, attach, ``wait``, restart recovery and ``rm``
work as for containers.  The sandbox's host processes (runsc, gofer, Sentry) sit in an isobox
cgroup: limits and ``stats`` count what the whole sandbox costs the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from isobox.errors import Conflict, InvalidArgument, IsoboxError
from isobox.images.store import Image
from isobox.runtimes.base import ExecRequest, Launched
from isobox.runtimes.container import caps as capabilities
from isobox.runtimes.container import cgroups, launch
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.monitor import ExitStatus, read_exit_file
from isobox.runtimes.container.runtime import (
    ContainerRuntime,
    build_process,
    check_mounts,
    data_dir,
    exit_path,
    run_dir,
    spawn_with_log,
)
from isobox.runtimes.gvisor import bundle, runsc
from isobox.runtimes.gvisor.monitor import Overlay, RunscCommand
from isobox.spec import WorkloadSpec
from isobox.state import ContainerRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isobox.net.manager import Attachment

KERNEL = "gVisor Sentry (a Linux-compatible kernel in user space)"


class GvisorRuntime:
    isolation = "gvisor"
    network_kind: str | None = None

    @property
    def layout(self) -> cgroups.Layout:
        return cgroups.host_layout()  # detected once per process, on first use

    def validate(self, spec: WorkloadSpec, image: Image) -> None:
        runsc.require()
        check_mounts(spec)
        if spec.init:
            raise InvalidArgument("--init is not available with --isolation gvisor",
                                  hint="gVisor's PID 1 reaps orphans of a shell; drop --init")
        if spec.security.seccomp == "custom":
            raise InvalidArgument("a custom seccomp profile is not applied under gVisor",
                                  hint="the Sentry filters the host's system calls itself")
        caps = capabilities.resolve(spec.security.cap_add, spec.security.cap_drop)
        build_process(spec, image, caps, None)

    def _dirs(self, rec: ContainerRecord, image: Image) -> list[str]:
        return [str(data_dir(rec.id) / "upper"), *(str(p) for p in reversed(image.layers))]

    def start(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image, attach: bool,
              network: Attachment | None = None) -> tuple[Launched, dict[str, Any], str | None]:
        path = runsc.require()
        check_mounts(spec)
        caps = capabilities.resolve(spec.security.cap_add, spec.security.cap_drop)
        proc = build_process(spec, image, caps, None)
        rdir, ddir = run_dir(rec.id), data_dir(rec.id)
        for sub in ("upper", "work"):
            (ddir / sub).mkdir(parents=True, exist_ok=True)
        (rdir / "rootfs").mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            exit_path(rec.id).unlink()
        dirs = self._dirs(rec, image)
        ident = bundle.identity(dirs, proc.user)
        hostname = spec.hostname or rec.id[:12]
        bundle.write(rdir, bundle.config(spec, proc, ident, hostname, str(rdir / "rootfs")))
        choice = runsc.choose_platform(path)
        runsc.delete(path, rec.id)  # a previous run's state, if its monitor died
        limits = cgroups.Limits(memory=spec.resources.memory, cpus=spec.resources.cpus,
                                pids=spec.resources.pids_limit or None, devices=cgroups.ALLOW_ALL_DEVICES)
        cgroup = cgroups.Cgroup.create(self.layout, rec.id, limits)
        sock_path = rdir / "attach.sock"
        console = str(rdir / "console.sock") if spec.tty else None
        argv = [*runsc.global_flags(path, choice.platform, "none"), "run", "--bundle", str(rdir),
                *(["--console-socket", console] if console else []), rec.id]
        cmd = RunscCommand(
            argv=argv, runsc=path, root=str(runsc.root_dir()), container_id=rec.id, tty=spec.tty,
            interactive=spec.interactive, wait_attach=attach,
            cgroup_files=[str(p) for p in cgroup.self_join_files()],
            overlay=Overlay([str(p) for p in reversed(image.layers)], str(ddir / "upper"), str(ddir / "work"),
                            str(rdir / "rootfs")),
            refused=bundle.check_executable(dirs, proc.argv[0], proc.env),
            exit_path=str(exit_path(rec.id)), cgroup=cgroup, sock_path=str(sock_path) if attach else None,
            console_path=console,
        )
        launched = spawn_with_log(rec.id, cgroup.remove, sock_path if attach else None,
                                  lambda listener, log_fd: (
            launch.spawn_monitor(cmd, {"log": log_fd} | ({"listener": listener.fileno()} if listener else {}))))
        applied = {
            "Runtime": {"name": "runsc", "path": path, "version": runsc.version(path),
                        "platform": choice.platform, "platforms_tried": choice.tried},
            "Kernel": KERNEL,
            "Capabilities": sorted(caps),
            "NoNewPrivileges": spec.security.no_new_privileges,
            # The engine admits only none or the default network here: gVisor joins no isobox network yet.
            "Network": "none (loopback only)",
            "Cgroup": {"version": self.layout.version, "paths": [str(p) for p in cgroup.paths],
                       **{k: v for k, v in cgroup.applied.items() if k != "version"}},
            "CgroupWarnings": list(getattr(cgroup, "warnings", [])),
        }
        return launched, applied, str(sock_path) if attach else None

    def _require_running(self, rec: ContainerRecord) -> None:
        if not rec.pid or (rec.pid_start and sc.process_start_time(rec.pid) != rec.pid_start):
            raise Conflict(f"container {rec.name} is not running")

    def signal(self, rec: ContainerRecord, sig: int) -> None:
        self._require_running(rec)
        path = runsc.require()
        try:
            done = runsc.kill(path, rec.id, sig)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Conflict(f"cannot signal container {rec.name}: {exc}") from None
        if done.returncode != 0:
            raise Conflict(f"container {rec.name} is not running",
                           hint=done.stderr.decode(errors="replace").strip()[-300:] or None)

    def exec(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image,
             request: ExecRequest) -> tuple[Launched, str]:
        self._require_running(rec)
        path = runsc.require()
        sec = spec.security
        caps = capabilities.resolve(["ALL"] if request.privileged else sec.cap_add, sec.cap_drop)
        base = build_process(spec, image, caps, None)
        base.argv = list(request.command)
        base.env = {**base.env, **request.env}
        base.cwd = request.workdir or base.cwd
        base.user = request.user if request.user is not None else base.user
        base.tty, base.interactive = request.tty, request.interactive
        dirs = self._dirs(rec, image)
        ident = bundle.identity(dirs, base.user)
        hostname = spec.hostname or rec.id[:12]
        process = bundle.config(spec, base, ident, hostname, "")["process"]
        token = os.urandom(6).hex()
        rdir = run_dir(rec.id)
        process_file = rdir / f"exec-{token}.json"
        process_file.write_text(json.dumps(process))
        sock_path = rdir / f"exec-{token}.sock"
        argv = [path, "--root", str(runsc.root_dir()), "exec", "--process", str(process_file), rec.id]
        cmd = RunscCommand(argv=argv, runsc=path, root=str(runsc.root_dir()), container_id=rec.id,
                           tty=request.tty, interactive=request.interactive, wait_attach=True,
                           refused=bundle.check_executable(dirs, base.argv[0], base.env),
                           process_file=str(process_file))
        listener = ContainerRuntime._listen(sock_path)
        try:
            launched = launch.spawn_monitor(cmd, {"listener": listener.fileno()})
        finally:
            listener.close()
        return launched, str(sock_path)

    def stats(self, rec: ContainerRecord) -> dict[str, Any]:
        try:
            return dict(cgroups.Cgroup.open(self.layout, rec.id).stats())
        except IsoboxError:
            return {}

    def collect_exit(self, rec: ContainerRecord) -> ExitStatus | None:
        return read_exit_file(str(exit_path(rec.id)))

    def cleanup(self, rec: ContainerRecord) -> None:
        path = runsc.binary()
        if path is not None:
            runsc.delete(path, rec.id)
        with contextlib.suppress(IsoboxError):
            cg = cgroups.Cgroup.open(self.layout, rec.id)
            cg.remove()

    def remove(self, rec: ContainerRecord) -> None:
        self.cleanup(rec)
        shutil.rmtree(run_dir(rec.id), ignore_errors=True)
        shutil.rmtree(data_dir(rec.id), ignore_errors=True)

    def host_facts(self) -> dict[str, Any]:
        path = runsc.binary()
        if path is None:
            return {"available": False, "why": "runsc is not installed", "hint": runsc.INSTALL_HINT}
        facts: dict[str, Any] = {"available": True, "runsc": path, "version": runsc.version(path),
                                 "kernel": KERNEL}
        cache = Path(runsc.root_dir()) / "platform.json"
        with contextlib.suppress(OSError, ValueError):
            facts["platform"] = json.loads(cache.read_text()).get("platform")
        return facts
