"""The container isolation level: isobox's own runtime (no runc/crun needed).

The daemon-side half: turns a WorkloadSpec and an Image into a ContainerConfig, creates the
cgroup, and hands over to ``launch`` for the fork choreography.  Also signals, stats, exec,
and the cleanup that makes ``rm`` leave nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isobox import attach, paths
from isobox.errors import Conflict, InvalidArgument, IsoboxError
from isobox.images.store import Image
from isobox.runtimes.base import ExecRequest, Launched
from isobox.runtimes.container import caps as capabilities
from isobox.runtimes.container import cgroups, launch, seccomp
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.config import (
    MASKED_PATHS,
    READONLY_PATHS,
    ContainerConfig,
    InterfaceConfig,
    ProcessConfig,
)
from isobox.runtimes.container.monitor import ExitStatus, read_exit_file
from isobox.spec import Mount, Security, WorkloadSpec
from isobox.state import ContainerRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isobox.net.manager import Attachment


def run_dir(container_id: str) -> Path:
    # Short: the attach socket's path must fit sockaddr_un (108 bytes) under any ISOBOX_RUN.
    return paths.run_root() / "c" / container_id[:16]


def data_dir(container_id: str) -> Path:
    return paths.containers_dir() / container_id


def log_path(container_id: str) -> Path:
    return data_dir(container_id) / "ctr.log"


def exit_path(container_id: str) -> Path:
    return run_dir(container_id) / "exit.json"


def compile_seccomp(security: Security, caps: list[str]) -> tuple[bytes | None, dict[str, Any]]:
    if security.seccomp == "unconfined":
        return None, {"mode": "unconfined"}
    custom = json.dumps(security.seccomp_profile, sort_keys=True) if security.seccomp == "custom" else ""
    return _compiled(custom, tuple(sorted(caps)))


@functools.lru_cache(maxsize=64)
def _compiled(custom_json: str, caps: tuple[str, ...]) -> tuple[bytes, dict[str, Any]]:
    # Every container start needs this; counting the allow-list alone costs ~2 ms.
    profile = seccomp.profile_from_json(json.loads(custom_json)) if custom_json else seccomp.default_profile()
    bpf = seccomp.compile_bpf(profile, list(caps))
    mode = "custom" if custom_json else "default"
    return bpf, {"mode": mode, "syscalls_allowed": seccomp.allowlist_size(profile, list(caps))}


def build_process(spec: WorkloadSpec, image: Image, caps: list[str], bpf: bytes | None) -> ProcessConfig:
    if spec.entrypoint is not None:
        argv = [*spec.entrypoint, *spec.command]  # Docker: --entrypoint drops the image's CMD
    else:
        argv = [*image.config.entrypoint, *(spec.command or image.config.cmd)]
    if not argv or not argv[0]:
        raise InvalidArgument("no command specified", hint="give a command after the image name")
    env = dict(item.split("=", 1) for item in image.config.env if "=" in item)
    env.update(spec.env)
    return ProcessConfig(
        argv=argv,
        env=env,
        cwd=spec.workdir or image.config.workdir or "/",
        user=spec.user if spec.user is not None else image.config.user,
        caps=caps,
        seccomp_bpf=bpf,
        no_new_privs=spec.security.no_new_privileges,
        tty=spec.tty,
        interactive=spec.interactive,
    )


def check_mounts(spec: WorkloadSpec) -> None:
    for mount in spec.mounts:
        if not os.path.exists(mount.source):
            raise InvalidArgument(f"bind source path does not exist: {mount.source}")


class ContainerRuntime:
    isolation = "container"
    network_kind: str | None = "veth"

    @property
    def layout(self) -> cgroups.Layout:
        return cgroups.host_layout()  # detected once per process, on first use

    def validate(self, spec: WorkloadSpec, image: Image) -> None:
        """Everything that can be refused before anything is made (create-time checks)."""
        check_mounts(spec)
        caps = capabilities.resolve(spec.security.cap_add, spec.security.cap_drop)
        compile_seccomp(spec.security, caps)
        build_process(spec, image, caps, None)

    def start(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image, attach: bool,
              network: Attachment | None = None) -> tuple[Launched, dict[str, Any], str | None]:
        check_mounts(spec)
        caps = capabilities.resolve(spec.security.cap_add, spec.security.cap_drop)
        bpf, seccomp_info = compile_seccomp(spec.security, caps)
        process = build_process(spec, image, caps, bpf)
        rdir, ddir = run_dir(rec.id), data_dir(rec.id)
        for sub in ("upper", "work"):
            (ddir / sub).mkdir(parents=True, exist_ok=True)
        (rdir / "rootfs").mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            exit_path(rec.id).unlink()
        limits = cgroups.Limits(memory=spec.resources.memory, cpus=spec.resources.cpus,
                                pids=spec.resources.pids_limit or None)
        cgroups.Cgroup.check(self.layout, rec.id, limits)  # the monitor makes it (start_container)
        cfg = ContainerConfig(
            id=rec.id,
            lowerdirs=[str(p) for p in reversed(image.layers)],
            upperdir=str(ddir / "upper"),
            workdir=str(ddir / "work"),
            rootfs=str(rdir / "rootfs"),
            hostname=spec.hostname or rec.id[:12],
            process=process,
            cgroup_procs=[],  # sent by the monitor once made
            mounts=[*spec.mounts, *self._etc_files(rdir, rec, spec, network)],
            read_only=spec.read_only,
            init=spec.init,
            interface=None if network is None else InterfaceConfig(
                network.lease.link, network.bridge_index, network.lease.mac, network.address,
                network.prefixlen, network.gateway),
            host_network=spec.network == "host",
        )
        sock_path = rdir / "attach.sock"
        launched = spawn_with_log(rec.id, lambda: self.cleanup(rec), sock_path if attach else None,
                                  lambda listener, log_fd: launch.start_container(
                                      cfg, limits, listener=listener, wait_attach=attach, log_fd=log_fd,
                                      exit_path=str(exit_path(rec.id)),
                                      sock_path=str(sock_path) if attach else None))
        cgroup: dict[str, Any] = launched.details.get("cgroup", {})
        applied = {
            "Capabilities": sorted(caps),
            "Seccomp": seccomp_info,
            "NoNewPrivileges": spec.security.no_new_privileges,
            "MaskedPaths": list(MASKED_PATHS),
            "ReadonlyPaths": list(READONLY_PATHS),
            "Namespaces": ["mount", "pid", "uts", "ipc", *([] if spec.network == "host" else ["net"]), "cgroup"],
            "Cgroup": {"version": self.layout.version, "paths": list(cgroup.get("paths", [])),
                       **{k: v for k, v in cgroup.get("applied", {}).items() if k != "version"}},
            "CgroupWarnings": list(cgroup.get("warnings", [])),
        }
        return launched, applied, str(sock_path) if attach else None

    @staticmethod
    def _etc_files(rdir: Path, rec: ContainerRecord, spec: WorkloadSpec,
                   network: Attachment | None) -> list[Mount]:
        """/etc/hosts and /etc/resolv.conf as Docker makes them: the embedded DNS of the network
        and the container's own names; the host's with --network host; none with --network none."""
        if spec.network == "host":
            return [Mount(src, src, readonly=True) for src in ("/etc/hosts", "/etc/resolv.conf")
                    if os.path.exists(src)]
        if network is None:
            return []
        hostname = spec.hostname or rec.id[:12]
        names = " ".join(dict.fromkeys([hostname, rec.name]))
        files = {"hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                          f"{network.address}\t{names}\n",
                 "resolv.conf": f"nameserver {network.gateway}\noptions ndots:0\n"}
        mounts = []
        for name, text in files.items():
            path = rdir / name
            path.write_text(text)
            mounts.append(Mount(str(path), f"/etc/{name}"))
        return mounts

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        return attach.listen(str(path))

    def signal(self, rec: ContainerRecord, sig: int) -> None:
        pidfd = self._pidfd(rec)
        if pidfd is None:
            raise Conflict(f"container {rec.name} is not running")
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            raise Conflict(f"container {rec.name} is not running") from None
        finally:
            os.close(pidfd)

    @staticmethod
    def _pidfd(rec: ContainerRecord) -> int | None:
        """A pidfd on the workload, after checking the pid was not reused by something else."""
        return sc.pidfd_of(rec.pid, rec.pid_start)

    def exec(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image,
             request: ExecRequest) -> tuple[Launched, str]:
        process = self._exec_process(spec, image, request)
        pidfd = self._pidfd(rec)
        if pidfd is None:
            raise Conflict(f"container {rec.name} is not running")
        sock_path = run_dir(rec.id) / f"exec-{os.urandom(6).hex()}.sock"
        listener = self._listen(sock_path)
        try:
            cgroup = cgroups.Cgroup.open(self.layout, rec.id)
            launched = launch.start_exec(pidfd, [str(p) for p in cgroup.self_join_files()], process, listener)
        finally:
            listener.close()
            os.close(pidfd)
        return launched, str(sock_path)

    def _exec_process(self, spec: WorkloadSpec, image: Image, request: ExecRequest) -> ProcessConfig:
        sec = spec.security
        caps = capabilities.resolve(["ALL"] if request.privileged else sec.cap_add, sec.cap_drop)
        bpf = None if request.privileged else compile_seccomp(sec, caps)[0]
        base = build_process(spec, image, caps, bpf)
        env = {**base.env, **request.env}
        return ProcessConfig(argv=request.command, env=env, cwd=request.workdir or base.cwd,
                             user=request.user if request.user is not None else base.user, caps=caps,
                             seccomp_bpf=bpf, no_new_privs=base.no_new_privs, tty=request.tty,
                             interactive=request.interactive)

    def host_facts(self) -> dict[str, Any]:
        return {"cgroup_version": self.layout.version}

    def stats(self, rec: ContainerRecord) -> dict[str, Any]:
        try:
            return dict(cgroups.Cgroup.open(self.layout, rec.id).stats())
        except IsoboxError:
            return {}

    def collect_exit(self, rec: ContainerRecord) -> ExitStatus | None:
        return read_exit_file(str(exit_path(rec.id)))

    def cleanup(self, rec: ContainerRecord) -> None:
        """After the workload ended: whatever the monitor could not remove (it may have died)."""
        with contextlib.suppress(IsoboxError):
            cg = cgroups.Cgroup.open(self.layout, rec.id)
            cg.remove()

    def remove(self, rec: ContainerRecord) -> None:
        self.cleanup(rec)
        shutil.rmtree(run_dir(rec.id), ignore_errors=True)
        shutil.rmtree(data_dir(rec.id), ignore_errors=True)


def spawn_with_log(container_id: str, remove_cgroup: Callable[[], None], attach_sock: Path | None,
                   spawn: Callable[[socket.socket | None, int], Launched]) -> Launched:
    """``spawn(listener, log_fd)``: start a container-like level's monitor with the container's
    log open and, given ``attach_sock``, its attach socket listening.  A failed start leaves no
    process, cgroup (``remove_cgroup`` kills what is in it and removes it) or socket behind;
    our copies of the fds are closed either way."""
    listener = attach.listen(str(attach_sock)) if attach_sock is not None else None
    log_fd = os.open(log_path(container_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        return spawn(listener, log_fd)
    except BaseException:
        with contextlib.suppress(Exception):
            remove_cgroup()
        if attach_sock is not None:
            with contextlib.suppress(OSError):
                attach_sock.unlink()
        raise
    finally:
        os.close(log_fd)
        if listener is not None:
            listener.close()
