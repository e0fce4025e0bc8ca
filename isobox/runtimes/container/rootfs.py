"""Builds a container's root filesystem inside its new mount namespace, then pivots into it.

Runs in the forked child, as root, after ``unshare(CLONE_NEWNS)``.  Every mount target inside
the root is resolved with ``openat2(RESOLVE_IN_ROOT)`` and mounted through its fd, so a symlink
in the image or a previous run's upper layer can never redirect a mount onto the host
(CVE-2021-30465, CVE-2025-31133).
"""

from __future__ import annotations

import os
import stat

from isobox.errors import RuntimeFailure
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.config import ContainerConfig

# Minimal /dev, as runc creates it: (name, major, minor).
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)


class _Root:
    """An O_PATH fd on the container root, for resolving paths strictly inside it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def target(self, path: str, as_file: bool = False) -> int:
        return sc.mkdir_in_root(self.fd, path, as_file=as_file)

    def mount(self, source: str | None, path: str, fstype: str | None, flags: int = 0,
              data: str | None = None, as_file: bool = False) -> None:
        fd = self.target(path, as_file=as_file)
        try:
            sc.mount(source, sc.fd_path(fd), fstype, flags, data)
        finally:
            os.close(fd)

    def remount_readonly(self, path: str, extra: int = 0) -> None:
        # Re-resolve after the bind so that the fd points at the new mount, not what it covers.
        fd = sc.open_in_root(self.fd, path)
        try:
            sc.mount(None, sc.fd_path(fd), None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | extra)
        finally:
            os.close(fd)

    def exists(self, path: str) -> tuple[bool, bool]:
        """(exists, is_dir) without following a final symlink out of the root."""
        try:
            fd = sc.open_in_root(self.fd, path)
        except OSError:
            return False, False
        try:
            return True, stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def _overlay_options(cfg: ContainerConfig) -> str:
    for path in (*cfg.lowerdirs, cfg.upperdir, cfg.workdir):
        if any(c in path for c in ",:\\"):
            raise RuntimeFailure(f"overlay path {path!r} contains a character overlayfs cannot take")
    return f"lowerdir={':'.join(cfg.lowerdirs)},upperdir={cfg.upperdir},workdir={cfg.workdir}"


def mount_root(cfg: ContainerConfig) -> _Root:
    # Nothing we mount may propagate back to the host, whatever the host's propagation is.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("overlay", cfg.rootfs, "overlay", 0, _overlay_options(cfg))
    return _Root(cfg.rootfs)


def mount_volumes(root: _Root, cfg: ContainerConfig) -> None:
    for volume in cfg.mounts:
        src = os.open(volume.source, os.O_PATH | os.O_CLOEXEC)
        try:
            is_dir = stat.S_ISDIR(os.fstat(src).st_mode)
            root.mount(sc.fd_path(src), volume.target, None, sc.MS_BIND | sc.MS_REC, as_file=not is_dir)
        finally:
            os.close(src)
        if volume.readonly:
            root.remount_readonly(volume.target, sc.MS_REC)


def mount_proc_sys(root: _Root) -> None:
    root.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    # A fresh sysfs: it shows the container's network namespace (only lo), read-only.
    root.mount("sysfs", "/sys", "sysfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY)


def mount_dev(root: _Root) -> None:
    root.mount("tmpfs", "/dev", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    dev = sc.open_in_root(root.fd, "/dev", os.O_DIRECTORY | os.O_RDONLY)
    try:
        for name, major, minor in DEVICES:
            os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
            os.chmod(name, 0o666, dir_fd=dev)  # mknod is subject to umask
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
        for name in ("pts", "shm", "mqueue"):
            os.mkdir(name, 0o755, dir_fd=dev)
    finally:
        os.close(dev)
    root.mount("devpts", "/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620,gid=5")
    root.mount("shm", "/dev/shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k")
    root.mount("mqueue", "/dev/mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def mask_paths(root: _Root, cfg: ContainerConfig) -> None:
    for path in cfg.masked_paths:
        exists, is_dir = root.exists(path)
        if not exists:
            continue
        if is_dir:
            root.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "size=0")
        else:
            root.mount("/dev/null", path, None, sc.MS_BIND)
    for path in cfg.readonly_paths:
        if root.exists(path)[0]:
            src = sc.open_in_root(root.fd, path)
            try:
                root.mount(sc.fd_path(src), path, None, sc.MS_BIND | sc.MS_REC)
            finally:
                os.close(src)
            root.remount_readonly(path, sc.MS_REC | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def pivot(root: _Root, read_only: bool) -> None:
    """Make the root ``/``: pivot_root(".", ".") then detach the old root (runc's way, no temp dir)."""
    os.chdir(root.path)
    os.close(root.fd)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if read_only:
        sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def build(cfg: ContainerConfig) -> None:
    """The whole sequence; raises OSError/RuntimeFailure naming the step that failed."""
    root = mount_root(cfg)
    mount_proc_sys(root)
    mount_dev(root)
    mount_volumes(root, cfg)
    mask_paths(root, cfg)
    pivot(root, cfg.read_only)
