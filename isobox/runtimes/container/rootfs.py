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
from isobox.runtimes.container.config import (
    MASKED_PATHS,
    READONLY_PATHS,
    ContainerConfig,
    DeviceNode,
    MountSpec,
)

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

    def lookup(self, path: str) -> int | None:
        """An O_PATH fd of ``path`` inside the root, or None when it does not exist."""
        try:
            return sc.open_in_root(self.fd, path)
        except FileNotFoundError:
            return None

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


def mount_root(cfg: ContainerConfig, private: bool = False) -> _Root:
    """``private``: ``stage`` already made every mount rprivate (the default propagation)."""
    if not private:
        # Nothing we mount may propagate back to the host, whatever the host's propagation is.
        sc.mount(None, "/", None, cfg.root_propagation or sc.MS_REC | sc.MS_PRIVATE)
    if cfg.lowerdirs:
        sc.mount("overlay", cfg.rootfs, "overlay", 0, _overlay_options(cfg))
    else:
        # A plain directory (an OCI bundle's rootfs): pivot_root needs a mount point.
        sc.mount(cfg.rootfs, cfg.rootfs, None, sc.MS_BIND | sc.MS_REC)
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


def mask_paths(root: _Root, masked: tuple[str, ...], readonly: tuple[str, ...]) -> None:
    # One lookup per path: the fd found is both the existence check and the mount target.
    for path in masked:
        fd = root.lookup(path)
        if fd is None:
            continue
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                sc.mount("tmpfs", sc.fd_path(fd), "tmpfs", sc.MS_RDONLY, "size=0")
            else:
                sc.mount("/dev/null", sc.fd_path(fd), None, sc.MS_BIND)
        finally:
            os.close(fd)
    for path in readonly:
        fd = root.lookup(path)
        if fd is None:
            continue
        try:
            sc.mount(sc.fd_path(fd), sc.fd_path(fd), None, sc.MS_BIND | sc.MS_REC)
        finally:
            os.close(fd)
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


def mount_one(root: _Root, spec: MountSpec) -> None:
    """One explicit mount; bind sources are opened on the host side, targets resolved in the root."""
    if spec.fstype == "cgroup":
        mount_cgroup_fs(root, spec)
    elif spec.bind:
        src = os.open(spec.source or "", os.O_PATH | os.O_CLOEXEC)
        try:
            is_dir = stat.S_ISDIR(os.fstat(src).st_mode)
            rec = sc.MS_REC if spec.recursive else 0
            root.mount(sc.fd_path(src), spec.destination, None, sc.MS_BIND | rec, as_file=not is_dir)
        finally:
            os.close(src)
        if spec.flags & ~sc.MS_REC:
            # Bind mounts ignore other flags: they take effect through a remount.
            fd = sc.open_in_root(root.fd, spec.destination)
            try:
                sc.mount(None, sc.fd_path(fd), None, sc.MS_REMOUNT | sc.MS_BIND | spec.flags)
            finally:
                os.close(fd)
    else:
        root.mount(spec.source, spec.destination, spec.fstype, spec.flags, spec.data)
    if spec.propagation:
        fd = sc.open_in_root(root.fd, spec.destination)
        try:
            sc.mount(None, sc.fd_path(fd), None, spec.propagation)
        finally:
            os.close(fd)


def _host_cgroup_mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of the host's cgroup hierarchies."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _source, superopts = right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((left.split()[4], fstype, superopts))
    return found


def _own_cgroup_paths() -> dict[str, str]:
    """Controller list ("memory", "cpu,cpuacct", "" for v2) -> this process's cgroup path."""
    paths = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            paths[controllers.removeprefix("name=")] = path
    return paths


def mount_cgroup_fs(root: _Root, spec: MountSpec) -> None:
    """``type: cgroup``: the container's own cgroups at ``spec.destination``, as runc shows them.

    v2: one cgroup2 mount.  v1: a tmpfs with one entry per hierarchy, each a bind of the
    container's cgroup directory (runc's way without a cgroup namespace; inside one, the
    bind of the namespace root shows the same thing).
    """
    hosts = _host_cgroup_mounts()
    if all(fstype == "cgroup2" for _, fstype, _ in hosts):
        root.mount("cgroup2", spec.destination, "cgroup2", spec.flags)
        return
    root.mount("tmpfs", spec.destination, "tmpfs", spec.flags & ~sc.MS_RDONLY, "mode=755")
    own = _own_cgroup_paths()
    base = spec.destination.rstrip("/")
    # The tmpfs we just mounted, opened once: every entry below is a plain name made in it, so
    # no path needs resolving inside the root again (~1 ms over 9 hierarchies on the OCI path).
    parent = sc.open_in_root(root.fd, base, os.O_DIRECTORY | os.O_RDONLY)
    try:
        for mountpoint, fstype, superopts in hosts:
            if fstype == "cgroup2":
                continue  # hybrid hosts: the empty unified tree is left out, as runc does
            name = os.path.basename(mountpoint)
            key = ",".join(
                o for o in superopts.split(",") if o not in ("rw", "ro") and not o.startswith("release_agent"))
            key = key.removeprefix("name=")
            if key not in own:
                continue
            os.mkdir(name, 0o755, dir_fd=parent)
            target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                src = os.open(mountpoint + own[key], os.O_PATH | os.O_CLOEXEC)
                try:
                    sc.mount(sc.fd_path(src), sc.fd_path(target), None, sc.MS_BIND | sc.MS_REC)
                finally:
                    os.close(src)
            finally:
                os.close(target)
            mounted = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)  # the new mount
            try:
                sc.mount(None, sc.fd_path(mounted), None, sc.MS_REMOUNT | sc.MS_BIND | spec.flags)
            finally:
                os.close(mounted)
        for entry in os.scandir(os.path.dirname(hosts[0][0])):  # cpu -> cpu,cpuacct, as on the host
            if entry.is_symlink():
                try:  # noqa: SIM105 - contextlib is one more import on the OCI runtime's path
                    os.symlink(os.readlink(entry.path), entry.name, dir_fd=parent)
                except FileExistsError:
                    pass
    finally:
        os.close(parent)
    if spec.flags & sc.MS_RDONLY:
        root.remount_readonly(base, spec.flags & ~sc.MS_RDONLY)


def make_devices(root: _Root, nodes: tuple[DeviceNode, ...], defaults: bool) -> None:
    """runc's /dev: the default nodes and links when /dev is a tmpfs, plus ``linux.devices``."""
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    wanted = list(nodes)
    if defaults:
        given = {node.path for node in nodes}
        wanted += [DeviceNode(f"/dev/{n}", "c", ma, mi) for n, ma, mi in DEVICES if f"/dev/{n}" not in given]
    for node in wanted:
        parent_path, name = os.path.split(node.path.rstrip("/"))
        pfd = root.target(parent_path)
        dfd = sc.open_in_root(root.fd, parent_path, os.O_DIRECTORY | os.O_RDONLY)
        os.close(pfd)
        try:
            try:
                os.mknod(name, (node.mode & 0o7777) | kinds[node.kind], os.makedev(node.major, node.minor),
                         dir_fd=dfd)
            except FileExistsError:
                continue
            os.chmod(name, node.mode & 0o7777, dir_fd=dfd, follow_symlinks=False)
            os.chown(name, node.uid, node.gid, dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
    if defaults:
        dev = sc.open_in_root(root.fd, "/dev", os.O_DIRECTORY | os.O_RDONLY)
        try:
            for name, target in DEV_LINKS:
                try:  # noqa: SIM105 - contextlib is not imported on the OCI start-up path
                    os.symlink(target, name, dir_fd=dev)
                except FileExistsError:
                    pass
        finally:
            os.close(dev)


def write_sysctls(root: _Root, sysctl: dict[str, str]) -> None:
    for key, value in sysctl.items():
        fd = sc.open_in_root(root.fd, "/proc/sys/" + key.replace(".", "/"), os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def build_explicit(cfg: ContainerConfig, plan: list[MountSpec]) -> None:
    """The OCI sequence: root, the configured mounts in order, devices, sysctls, masks, pivot."""
    root = mount_root(cfg)
    for spec in plan:
        mount_one(root, spec)
    dev_tmpfs = any(m.destination.rstrip("/") == "/dev" and m.fstype == "tmpfs" for m in plan)
    make_devices(root, cfg.devices, dev_tmpfs)
    write_sysctls(root, cfg.sysctl)
    mask_paths(root, cfg.masked_paths, cfg.readonly_paths)
    pivot(root, cfg.read_only)


# /proc, /sys and /dev as ``stage`` mounts them, each moved into the root whole.
STAGED = ("/proc", "/sys", "/dev")


def stage(directory: str) -> None:
    """What a pooled init mounts before it knows its container: /proc (with the masks and
    read-only paths), /sys and /dev depend only on its own PID, network and IPC namespaces,
    which it already has.  They go on a private tmpfs at ``directory`` (an empty directory of
    ours; the tmpfs hides it in this mount namespace only), whence ``build`` moves them: three
    moves instead of ~25 mounts on the start's critical path.  Raises OSError; the caller then
    lets ``build`` mount them itself."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", directory, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=700,size=16k")
    root = _Root(directory)
    try:
        mount_proc_sys(root)
        mount_dev(root)
        mask_paths(root, MASKED_PATHS, READONLY_PATHS)
    finally:
        os.close(root.fd)


def can_use_stage(cfg: ContainerConfig) -> bool:
    """The staged trees fit the default container only: its sysfs shows the network namespace
    it was mounted in, which --network host leaves."""
    return (cfg.mount_plan is None and not cfg.host_network and cfg.masked_paths == MASKED_PATHS
            and cfg.readonly_paths == READONLY_PATHS and not cfg.root_propagation)


def _move_staged(root: _Root, directory: str) -> None:
    for path in STAGED:
        fd = root.target(path)
        try:
            sc.mount(directory + path, sc.fd_path(fd), None, sc.MS_MOVE)
        finally:
            os.close(fd)


def build(cfg: ContainerConfig, staged: str | None = None) -> None:
    """The whole sequence; raises OSError/RuntimeFailure naming the step that failed.
    ``staged``: where ``stage`` mounted /proc, /sys and /dev (see ``can_use_stage``)."""
    if cfg.mount_plan is not None:
        build_explicit(cfg, cfg.mount_plan)
        return
    root = mount_root(cfg, private=staged is not None)
    if staged is not None:
        _move_staged(root, staged)
        mount_volumes(root, cfg)
    else:
        mount_proc_sys(root)
        mount_dev(root)
        mount_volumes(root, cfg)
        mask_paths(root, cfg.masked_paths, cfg.readonly_paths)
    pivot(root, cfg.read_only)
