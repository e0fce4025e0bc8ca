"""The VM isolation level: each workload in its own QEMU microVM with isobox's kernel and init.

Daemon-side half: prepares the boot files (cached), the root disk (the image's ext4 base + a
qcow2 overlay per VM), the spec disk and the QEMU command line, then starts the VM monitor
(``monitor.py``), which owns QEMU from then on and outlives the daemon.

    run dir  <ISOBOX_RUN>/v/<id16>/  chardev + QMP + attach sockets, spec disk, exit file
    data dir <ISOBOX_ROOT>/containers/<id>/  ctr.log (the workload's stdout/stderr, CRI format),
             console.log (serial console), root.qcow2 (the overlay)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isobox import attach, paths
from isobox.errors import Conflict, InvalidArgument, RuntimeFailure
from isobox.images import vmdisk
from isobox.images.store import Image
from isobox.runtimes.base import ExecRequest, Launched
from isobox.runtimes.container.monitor import ExitStatus, read_exit_file
from isobox.runtimes.container.process import resolve_identity
from isobox.runtimes.vm import accel as accels
from isobox.runtimes.vm import guest, qemu, specdisk
from isobox.runtimes.vm.monitor import VIRTIOFSD, MonitorConfig, read_line, unmount_under
from isobox.spec import WorkloadSpec
from isobox.state import ContainerRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isobox.net.manager import Attachment

DEFAULT_MEMORY_MIB = 512
MIN_MEMORY_MIB = 128
BOOT_TIMEOUT = {"kvm": 30.0, "tcg": 120.0}


def run_dir(container_id: str) -> Path:
    return paths.run_root() / "v" / container_id[:16]


def data_dir(container_id: str) -> Path:
    return paths.containers_dir() / container_id


def exit_path(container_id: str) -> Path:
    return run_dir(container_id) / "exit.json"


def _layer_db(image: Image) -> Callable[[str], list[list[str]]]:
    """read_db for resolve_identity: the image's /etc files, topmost layer first."""
    def read(path: str) -> list[list[str]]:
        for layer in reversed(image.layers):
            candidate = layer / path.lstrip("/")
            if candidate.is_file() and not candidate.is_symlink():
                text = candidate.read_text(encoding="utf-8", errors="replace")
                return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return []
    return read


def guest_process(spec: WorkloadSpec, image: Image, argv: list[str] | None = None,
                  env_extra: dict[str, str] | None = None, workdir: str | None = None,
                  user: str | None = None, tty: bool = False) -> specdisk.GuestProcess:
    if argv is None:
        if spec.entrypoint is not None:
            argv = [*spec.entrypoint, *spec.command]
        else:
            argv = [*image.config.entrypoint, *(spec.command or image.config.cmd)]
    if not argv or not argv[0]:
        raise InvalidArgument("no command specified", hint="give a command after the image name")
    who = user if user is not None else (spec.user if spec.user is not None else image.config.user)
    ident = resolve_identity(who or "0", _layer_db(image))
    env = dict(item.split("=", 1) for item in image.config.env if "=" in item)
    env.update(spec.env)
    env.update(env_extra or {})
    env.setdefault("HOSTNAME", spec.hostname or "")
    env.setdefault("HOME", ident.home)
    if tty:
        env.setdefault("TERM", "xterm")  # as a container with -t has it
    return specdisk.GuestProcess(argv, env, workdir or spec.workdir or image.config.workdir or "/",
                                 ident.uid, ident.gid, ident.groups)


def memory_mib(spec: WorkloadSpec) -> int:
    if spec.resources.memory is None:
        return DEFAULT_MEMORY_MIB
    return max(MIN_MEMORY_MIB, spec.resources.memory // (1 << 20))


def vcpus(spec: WorkloadSpec) -> int:
    return max(1, math.ceil(spec.resources.cpus or 1))


class VmRuntime:
    isolation = "vm"
    network_kind: str | None = "tap"

    def validate(self, spec: WorkloadSpec, image: Image) -> None:
        if shutil.which(qemu.QEMU) is None:
            raise InvalidArgument("the VM isolation level needs QEMU",
                                  hint="apt-get install qemu-system-x86 qemu-utils (or run scripts/setup.sh)")
        accels.tb_size_mib()  # a bad ISOBOX_VM_TB_SIZE fails here, before any row or file is made
        if spec.resources.memory is not None and spec.resources.memory < MIN_MEMORY_MIB << 20:
            raise InvalidArgument(f"--memory for a VM is its RAM: at least {MIN_MEMORY_MIB}m")
        if image.disk:  # a disk image's own OS, booted through firmware
            from isobox.runtimes.vm import diskboot

            diskboot.validate(spec, image)
            return
        if spec.firmware:
            raise InvalidArgument(f"--firmware is for VM disk images; {spec.image} boots isobox's kernel directly",
                                  hint="images from `image import-disk` or `image build debian:bookworm --bootable`")
        for mount in spec.mounts:
            if not os.path.isdir(mount.source):
                raise InvalidArgument(f"a VM volume must be an existing directory: {mount.source}",
                                      hint="VM volumes are virtio-fs shares of host directories")
        if spec.mounts and not os.access(VIRTIOFSD, os.X_OK):
            raise InvalidArgument("VM volumes need virtiofsd", hint=f"{VIRTIOFSD} comes with qemu-system-common")
        guest_process(spec, image)

    def start(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image, attach: bool,
              network: Attachment | None = None) -> tuple[Launched, dict[str, Any], str | None]:
        if image.disk:
            from isobox.runtimes.vm import diskboot

            return diskboot.start(rec, spec, image, attach, network)
        proc = guest_process(spec, image, tty=spec.tty)
        proc.env["HOSTNAME"] = spec.hostname or rec.id[:12]
        chosen = accels.choose()
        boot = guest.boot_files()
        base = vmdisk.ensure_base(image)
        rdir, ddir = run_dir(rec.id), data_dir(rec.id)
        shutil.rmtree(rdir, ignore_errors=True)
        rdir.mkdir(parents=True, mode=0o700)
        ddir.mkdir(parents=True, exist_ok=True, mode=0o700)
        overlay = ddir / "root.qcow2"
        if not overlay.exists():
            vmdisk.create_overlay(base, overlay)
        spec_disk = rdir / "spec.img"
        volumes = [(m.target, m.readonly) for m in spec.mounts]
        net = None if network is None else specdisk.GuestNetwork(
            f"{network.address}/{network.prefixlen}", network.gateway,
            list(dict.fromkeys([spec.hostname or rec.id[:12], rec.name])))
        hostname = spec.hostname or rec.id[:12]
        sync = not spec.auto_remove
        script = specdisk.spec_script(proc, hostname, spec.interactive, volumes, net, spec.tty, sync)
        direct = None if volumes or net else (hostname, specdisk.workload_argv(proc, spec.tty, spec.interactive, sync))
        spec_disk.write_bytes(specdisk.disk_image(script, direct))
        extra = []
        if chosen.name == "tcg" and (khz := accels.tsc_khz()):
            extra.append(f"tsc_early_khz={khz}")
        cfg = qemu.VmConfig(run_dir=rdir, kernel=boot.kernel, initramfs=boot.initramfs, root_disk=overlay,
                            spec_disk=spec_disk, accel=chosen.name, tb_size_mib=chosen.tb_size_mib, memory_mib=memory_mib(spec),
                            cpus=vcpus(spec), name=f"isobox-{rec.id[:12]}", extra_kernel_args=extra,
                            volumes=len(spec.mounts), tools_disk=boot.tools,
                            nic=None if network is None else (network.lease.link, network.lease.mac))
        argv = qemu.qemu_cmdline(cfg)
        mcfg = MonitorConfig(argv=argv, run_dir=str(rdir), log_path=str(ddir / "ctr.log"),
                             console_log=str(ddir / "console.log"), exit_path=str(exit_path(rec.id)),
                             wait_attach=attach, boot_timeout=BOOT_TIMEOUT[chosen.name],
                             volumes=[(m.source, m.readonly) for m in spec.mounts])
        mcfg.save(rdir / "monitor.json")
        try:
            # With volumes, the monitor starts QEMU once their virtiofsd processes run.
            launched = self._spawn_monitor(rdir, mcfg.boot_timeout + 20, None if spec.mounts else argv)
        except BaseException:
            unmount_under(str(rdir))  # never rmtree through a volume's bind mount
            shutil.rmtree(rdir, ignore_errors=True)
            raise
        applied = {
            "Accelerator": chosen.name,
            "AcceleratorWarning": chosen.warning,
            "Machine": cfg.machine,
            "Kernel": str(boot.kernel),
            "KernelVersion": boot.kernel_version,
            "Initramfs": str(boot.initramfs),
            "ToolsDisk": str(boot.tools) if boot.tools else None,
            "MemoryMiB": cfg.memory_mib,
            "VCPUs": cfg.cpus,
            "RootDisk": {"base": str(base), "overlay": str(overlay)},
            "QemuPid": launched.pid,
            "QemuCommandLine": qemu.render(argv),
            "QmpSocket": str(cfg.socket("qmp")),
            "ConsoleLog": str(ddir / "console.log"),
            "Sandbox": qemu.SANDBOX,
            "Volumes": [{"source": m.source, "target": m.target, "readonly": m.readonly, "type": "virtiofs"}
                        for m in spec.mounts],
            "CgroupWarnings": [chosen.warning] if chosen.warning else [],
            "NetworkDevice": None if network is None else {"tap": network.lease.link, "model": "virtio-net"},
        }
        return launched, applied, str(rdir / "attach.sock") if attach else None

    @staticmethod
    def _spawn_monitor(rdir: Path, timeout: float, qemu_argv: list[str] | None) -> Launched:
        """The monitor (vmstart.py).  Given ``qemu_argv``, ``isobox-run --launch`` starts QEMU
        first and then becomes the monitor, so that QEMU does not wait for an interpreter."""
        launch = [] if qemu_argv is None else [
            str(guest.launcher()), "--launch", str(rdir / "qemu.log"), str(len(qemu_argv)), *qemu_argv, "--"]
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        os.set_inheritable(status_w, True)
        argv = [*launch, sys.executable, "-m", "isobox.runtimes.vm.vmstart", str(rdir / "monitor.json"),
                str(status_w)]
        with open(rdir / "monitor.err", "wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, pass_fds=(status_w,),
                start_new_session=True, close_fds=True)
        os.close(status_w)
        try:
            line = read_line(status_r, timeout)
            if not line:
                detail = (rdir / "monitor.err").read_text(errors="replace").strip()[-800:]
                raise RuntimeFailure("the VM monitor died before reporting" + (f": {detail}" if detail else ""))
            status = json.loads(line)
            if "error" in status:
                raise RuntimeFailure(str(status["error"]))
        except BaseException:
            os.close(status_r)
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(30)
            raise
        proc.returncode = 0  # the engine reaps it (waitpid on monitor_pid); keep Popen from trying
        return Launched(int(status["pid"]), int(status["start"]), int(status["monitor"]),
                        int(status["monitor_start"]), status_r)

    # -- signals ----------------------------------------------------------------------------------

    def signal(self, rec: ContainerRecord, sig: int) -> None:
        if sig == signal.SIGKILL:
            self._kill_qemu(rec)
            return
        try:
            sock = attach.connect(str(run_dir(rec.id) / "attach.sock"), timeout=5)
        except OSError:
            raise Conflict(f"container {rec.name} is not running") from None
        with sock:
            sock.sendall(attach.encode(attach.Frame.SIGNAL, str(sig).encode()))

    @staticmethod
    def _qemu_pidfd(rec: ContainerRecord) -> int | None:
        from isobox.runtimes.container import syscalls as sc

        return sc.pidfd_of(rec.pid, rec.pid_start)

    def _kill_qemu(self, rec: ContainerRecord) -> None:
        pidfd = self._qemu_pidfd(rec)
        if pidfd is None:
            raise Conflict(f"container {rec.name} is not running")
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            raise Conflict(f"container {rec.name} is not running") from None
        finally:
            os.close(pidfd)

    # -- exec, stats ------------------------------------------------------------------------------

    def exec(self, rec: ContainerRecord, spec: WorkloadSpec, image: Image,
             request: ExecRequest) -> tuple[Launched, str]:
        from isobox.runtimes.vm.agent import start_exec

        if image.disk:
            from isobox.runtimes.vm import diskboot

            if request.tty:  # its qemu-ga runs commands without a terminal, and there is no isobox-run
                raise InvalidArgument(f"exec -t is not supported for {spec.image}, an OS booted from its disk",
                                      hint="use -i without -t, or `isobox console NAME` for a terminal")
            return start_exec(run_dir(rec.id), diskboot.exec_argv(request), request.interactive)
        proc = guest_process(spec, image, request.command, request.env, request.workdir, request.user, request.tty)
        proc.env["HOSTNAME"] = spec.hostname or rec.id[:12]
        # exec -t: the guest's pty relay on a port plugged for the session (ptyexec.py), not qemu-ga's pipes
        return start_exec(run_dir(rec.id), specdisk.helper_argv(proc), request.interactive, tty=request.tty)

    def stats(self, rec: ContainerRecord) -> dict[str, Any]:
        if not rec.pid:
            return {}
        try:
            with open(f"/proc/{rec.pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            with open(f"/proc/{rec.pid}/stat", "rb") as fh:
                parts = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            return {}
        ticks = os.sysconf("SC_CLK_TCK")
        cpu_ns = (int(parts[11]) + int(parts[12])) * 1_000_000_000 // ticks
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        limit = (rec.applied.get("MemoryMiB") or 0) << 20
        return {"cpu_usage_ns": cpu_ns, "memory_usage": rss, "memory_limit": limit, "pids": 1}

    # -- exit and cleanup -------------------------------------------------------------------------

    def collect_exit(self, rec: ContainerRecord) -> ExitStatus | None:
        return read_exit_file(str(exit_path(rec.id)))

    def cleanup(self, rec: ContainerRecord) -> None:
        """A dead monitor cannot stop QEMU: do it here (the pid is checked against reuse)."""
        with contextlib.suppress(Conflict):
            self._kill_qemu(rec)
        for name in qemu.SOCKETS:
            with contextlib.suppress(OSError):
                (run_dir(rec.id) / f"{name}.sock").unlink()
        unmount_under(str(run_dir(rec.id)))

    def remove(self, rec: ContainerRecord) -> None:
        self.cleanup(rec)
        shutil.rmtree(run_dir(rec.id), ignore_errors=True)
        shutil.rmtree(data_dir(rec.id), ignore_errors=True)

    def host_facts(self) -> dict[str, Any]:
        try:
            chosen = accels.choose()
        except InvalidArgument as e:  # the daemon's own settings: `system info` shows why, compare skips VMs
            return {"available": False, "why": e.message, "qemu": shutil.which(qemu.QEMU)}
        return {"qemu": shutil.which(qemu.QEMU), "accelerator": chosen.name, "warning": chosen.warning,
                "machine": "microvm", "kernel_cache": str(guest.cache_root()),
                "tcg_cache_mib": chosen.tb_size_mib if chosen.name == "tcg" else None}


__all__ = ["VmRuntime"]
