"""The guest side of a microVM: Debian's cloud kernel and an isobox initramfs, built once and cached.

The kernel (``linux-image-cloud-amd64``) and ``qemu-guest-agent`` are fetched with ``apt-get
download`` and unpacked with ``dpkg-deb -x`` into isobox's cache — never installed on the host.
The initramfs is a newc cpio written here: Debian's static busybox, the virtio modules the cloud
kernel builds as modules, and ``/init`` (isobox-run, see ``guestinit.py``).  qemu-ga with the
host's copies of its libraries (the host is the same Debian release) is on a read-only "tools"
disk beside it.  Everything is keyed by content, so a new init or kernel makes new files and old
ones are never rewritten under a running VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from isobox.errors import RuntimeFailure
from isobox.runtimes.vm import guestinit, kernelimage

KERNEL_PACKAGE = "linux-image-cloud-amd64"
AGENT_PACKAGE = "qemu-guest-agent"
BUSYBOX = "/bin/busybox"
# Load order matters (no modules.dep in the package: depmod runs at install time).
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "fuse", "virtiofs",
           "failover", "net_failover", "virtio_net")
AGENT_BINARY = "usr/sbin/qemu-ga"
TOOLS_MOUNT = "tools"  # where the init mounts the tools disk (qemu-ga and its libraries)
# isobox-run (guestrun.c), which is also the init's first stage (guestboot.c) as /init.
RUN_HELPER_SOURCES = (Path(__file__).with_name("guestrun.c"), Path(__file__).with_name("guestboot.c"))


def cache_root() -> Path:
    """Downloaded packages and built boot files (``ISOBOX_CACHE``); shared by every state root."""
    return Path(os.environ.get("ISOBOX_CACHE", "/var/cache/isobox")) / "vm"


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initramfs: Path
    kernel_version: str
    tools: Path | None = None  # the guest agent's disk (None: exec/cp are unavailable)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError:
        raise RuntimeFailure(f"{argv[0]} not found", hint="isobox fetches its guest kernel and agent with "
                             "apt-get download and builds the initramfs with gcc: run on Debian/Ubuntu "
                             "with apt, gcc and busybox-static") from None
    if done.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-500:]}",
                             hint="is the Debian package archive reachable? (apt-get update)")
    return done.stdout


def _resolve_kernel_package() -> str:
    """The versioned package the metapackage points at (linux-image-6.1.0-NN-cloud-amd64)."""
    out = _run(["apt-cache", "depends", "--important", KERNEL_PACKAGE])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    raise RuntimeFailure(f"cannot resolve {KERNEL_PACKAGE}", hint="apt-get update, then try again")


def _fetch(package: str, root: Path) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` into root/pkg/<package>; idempotent."""
    dest = root / "pkg" / package
    if (dest / ".done").exists():
        return dest
    work = root / "download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=work)
    debs = list(work.glob("*.deb"))
    if len(debs) != 1:
        raise RuntimeFailure(f"apt-get download {package} gave {len(debs)} files")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(debs[0]), str(dest)])
    (dest / ".done").write_text(debs[0].name + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return dest


def kernel_tree(root: Path) -> tuple[Path, Path, str]:
    """(vmlinuz, modules dir, version) of the cached Debian cloud kernel, fetching it once."""
    marker = root / "kernel-package"
    package = marker.read_text().strip() if marker.exists() else _resolve_kernel_package()
    tree = _fetch(package, root)
    marker.write_text(package + "\n")
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeFailure(f"no kernel in {package}")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return kernels[-1], tree / "lib" / "modules" / version, version


# -- the cpio (newc) writer ------------------------------------------------------------------------


class Cpio:
    """Just enough of the newc format for an initramfs: dirs, files, symlinks, device nodes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.ino += 1
        self.parts.append(header + name.encode() + b"\0")
        self.parts.append(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.parts.append(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        self.dir(os.path.dirname(name))
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = b"".join(self.parts)
        return data + b"\0" * (-len(data) % 512)


def _shared_libraries(binary: Path) -> list[str]:
    """The host paths ldd resolves for ``binary`` (same Debian release as the guest userland)."""
    out = _run(["ldd", str(binary)])
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the dynamic loader
    return libs


def run_helper(root: Path) -> Path:
    """The static ``isobox-run`` helper, compiled once per source version."""
    source = b"".join(src.read_bytes() for src in RUN_HELPER_SOURCES)
    out = root / f"isobox-run-{hashlib.sha256(source).hexdigest()[:12]}"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        _run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", str(tmp), *map(str, RUN_HELPER_SOURCES)])
        os.rename(tmp, out)
    prune_unused(root, ["isobox-run-*"], keep=[out])
    return out


# Other versions' boot files (another checkout or daemon sharing the cache) are deleted only
# once nobody has used them for this long: deleting them at once made two versions rebuild
# alternately, and could pull a helper from under a start that had just been given its path.
UNUSED_AFTER_S = 24 * 3600.0


def prune_unused(root: Path, patterns: list[str], keep: list[Path], now: float | None = None) -> list[Path]:
    """Mark ``keep`` as used (mtime) and delete the files matching ``patterns`` that were not
    used for UNUSED_AFTER_S; returns what was deleted.  A running VM keeps its open file of an
    unlinked one."""
    now = time.time() if now is None else now
    for path in keep:
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))
    gone = []
    for pattern in patterns:
        for old in root.glob(pattern):
            with contextlib.suppress(OSError):
                if old not in keep and now - old.stat().st_mtime > UNUSED_AFTER_S:
                    old.unlink()
                    gone.append(old)
    return gone


def launcher() -> Path:
    """isobox-run for the host's ``--launch`` (QEMU first, then the monitor): any VM's start."""
    root = cache_root()
    with _locked(root):
        return run_helper(root)


def _busybox_applets() -> list[str]:
    out = _run([BUSYBOX, "--list"])
    return sorted({"sh", *(a for a in out.split() if a and "/" not in a and a != "busybox")})


def _agent_files(agent_tree: Path | None) -> list[tuple[str, Path]]:
    """(guest path, host file) of qemu-ga and the host's copies of its libraries; [] without it."""
    if agent_tree is None or not (agent_tree / AGENT_BINARY).exists():
        return []
    agent = agent_tree / AGENT_BINARY
    return [("/" + AGENT_BINARY, agent), *((lib, Path(os.path.realpath(lib))) for lib in _shared_libraries(agent))]


def build_tools_disk(files: list[tuple[str, Path]], out: Path) -> None:
    """A read-only ext4 of ``files`` at their guest paths, without a journal (nothing writes it).

    qemu-ga and its libraries (~6 MiB) were in the initramfs, where QEMU keeps a copy of them for
    the VM's life (fw_cfg) and the guest another in its rootfs: on a disk they are the host's page
    cache, shared by every VM, and read by the guest only when the agent starts."""
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:
        total = 0
        for guest_path, host_file in files:
            dest = Path(staging) / guest_path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host_file, dest)
            dest.chmod(0o755)
            total += dest.stat().st_size
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.truncate(total + total // 4 + (4 << 20))
        try:
            _run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-L", "isobox-tools", "-E", "root_owner=0:0",
                  "-d", staging, str(tmp)])
            tmp.chmod(0o444)
            os.rename(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)


def build_initramfs(modules_dir: Path, agent_files: list[tuple[str, Path]], helper: Path) -> bytes:
    cpio = Cpio()
    for d in ("proc", "sys", "dev", "run", "tmp", "newroot", "bin", "sbin", "etc", "var"):
        cpio.dir(d)
    cpio.symlink("var/run", "/run")
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for applet in _busybox_applets():
        cpio.symlink(f"bin/{applet}", "busybox")  # what `busybox --install -s` would make at each boot
    cpio.file("bin/isobox-run", helper.read_bytes(), 0o755)
    cpio.symlink("init", "/bin/isobox-run")  # its first stage (guestboot.c), which execs init.sh
    cpio.file("init.sh", guestinit.INIT_SCRIPT.encode(), 0o755)
    found = {p.stem: p for p in modules_dir.rglob("*.ko")}
    for name in MODULES:
        if name in found:
            cpio.file(f"lib/modules/{name}.ko", found[name].read_bytes())
    # The agent's files are on the tools disk, which the init mounts at /tools before it starts
    # qemu-ga: links from their usual paths make the loader and the libraries resolve there.
    cpio.dir(TOOLS_MOUNT)
    for directory in sorted({os.path.dirname(path).strip("/") for path, _ in agent_files[1:]}):
        cpio.symlink(directory, f"/{TOOLS_MOUNT}/{directory}")
    if agent_files:
        cpio.symlink(AGENT_BINARY, f"/{TOOLS_MOUNT}/{AGENT_BINARY}")
    return cpio.finish()


def boot_files() -> BootFiles:
    """The kernel and initramfs every microVM boots (``ISOBOX_VM_KERNEL`` overrides the kernel,
    which QEMU then boots as it is)."""
    root = cache_root()
    with _locked(root):
        vmlinuz, modules_dir, version = kernel_tree(root)
        override = os.environ.get("ISOBOX_VM_KERNEL")
        if override:
            kernel = Path(override)
        else:  # unpacked for a PVH boot where the kernel allows it (kernelimage.py)
            kernel = kernelimage.pvh_elf(vmlinuz, root, version) or vmlinuz
            prune_unused(root, ["vmlinux-*"], keep=[kernel])
        try:
            agent_tree: Path | None = _fetch(AGENT_PACKAGE, root)
        except RuntimeFailure:
            agent_tree = None  # exec/cp are unavailable, runs still work
        helper = run_helper(root)
        agent_deb = (agent_tree / ".done").read_text().strip() if agent_tree is not None else ""
        key = hashlib.sha256(
            f"{guestinit.INIT_SCRIPT}\0{version}\0{MODULES}\0{agent_deb}\0{helper.name}".encode()
            + Path(BUSYBOX).read_bytes()[:4096]).hexdigest()[:16]
        initramfs = root / f"initramfs-{key}.cpio"
        tools = root / f"tools-{key}.ext4" if agent_deb else None
        if not initramfs.exists() or (tools is not None and not tools.exists()):
            agent_files = _agent_files(agent_tree)
            if tools is not None:
                build_tools_disk(agent_files, tools)
            tmp = initramfs.with_suffix(".tmp")
            tmp.write_bytes(build_initramfs(modules_dir, agent_files, helper))
            os.rename(tmp, initramfs)
        prune_unused(root, ["initramfs-*.cpio", "tools-*.ext4"], keep=[initramfs, *([tools] if tools else [])])
        return BootFiles(kernel, initramfs, version, tools)
