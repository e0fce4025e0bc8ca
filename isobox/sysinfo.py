"""``isobox system info``: what this host offers each isolation level, and what to do about gaps.

Every check is a small function returning a ``Check``; ``collect()`` runs them all.  Checks read
/proc, /sys and /dev only; the one exception is ``--version`` of qemu-system-x86_64 and runsc, run
in parallel, with a timeout, once per binary per process.

    status  "ok"       usable as is
            "warn"     present but limited (PVM instead of KVM, a controller missing, ...)
            "missing"  absent; ``optional`` checks are peers or extras, not errors
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OK, WARN, MISSING = "ok", "warn", "missing"
STATUSES = (OK, WARN, MISSING)

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12
VERSION_TIMEOUT = 3.0
TCG_HINT = "VMs will run under TCG (slow)"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    hint: str | None = None
    optional: bool = False  # a peer or an extra: "missing" is not an error

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "hint": self.hint,
                "optional": self.optional}


# -- running it -----------------------------------------------------------------------------------


def collect() -> dict[str, Any]:
    versions = _Versions(("qemu-system-x86_64", "runsc"))  # started first, they run meanwhile
    checks: list[Check] = [
        check_kvm(),
        check_cgroups(),
        check_seccomp(),
        check_user_namespaces(),
        check_overlayfs(),
        check_pidfd(),
        check_cgroup_ns(),
        check_busybox_static(),
        check_qemu(versions.get),
        check_qemu_img(),
        check_ovmf(),
        check_runsc(versions.get),
        check_runc(),
        check_podman(),
    ]
    return {"host": host(), "checks": [c.to_dict() for c in checks]}


def accelerator() -> tuple[str, str]:
    """("kvm" | "tcg", why) for the VM level: KVM only when it is usable for stock guest kernels."""
    kvm = check_kvm()
    if kvm.status == OK:
        return "kvm", kvm.detail
    return "tcg", kvm.detail


def host() -> dict[str, Any]:
    return {
        "kernel": os.uname().release,
        "os": _os_release().get("PRETTY_NAME", "unknown"),
        "cpus": os.cpu_count() or 1,
        "memory": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "root": os.geteuid() == 0,
    }


def render(info: dict[str, Any]) -> str:
    """A plain-text table: one line per check, its hint indented on the next."""
    h = info["host"]
    lines = [
        f"Host: {h['os']}, kernel {h['kernel']}, {h['cpus']} CPUs, {h['memory'] / (1 << 30):.1f} GiB memory"
        + (", running as root" if h["root"] else ", not root (isobox needs root)"),
        "",
    ]
    width = max((len(c["name"]) for c in info["checks"]), default=0)
    marks = {OK: "✓", WARN: "!", MISSING: "✗"}
    for c in info["checks"]:
        optional = " (optional)" if c.get("optional") and c["status"] != OK else ""
        lines.append(f"  {marks.get(c['status'], '?')} {c['name']:<{width}}  {c['detail']}{optional}")
        if c.get("hint"):
            lines.append(f"    {'':<{width}}  → {c['hint']}")
    return "\n".join(lines)


# -- kernel features ------------------------------------------------------------------------------


def check_kvm() -> Check:
    if not os.path.exists("/dev/kvm"):
        return Check("kvm", MISSING, "/dev/kvm absent",
                     f"{TCG_HINT}; enable VT-x/AMD-V (or nested virtualization) for KVM")
    if os.path.isdir("/sys/module/kvm_pvm"):
        # PVM's /dev/kvm opens and answers ioctls, but a stock kernel dies with
        # "KVM internal error. Suberror: 1": only the probe boot or the module name tells.
        return Check("kvm", WARN, "PVM: only PVM-enabled guest kernels boot; isobox uses TCG", TCG_HINT)
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Check("kvm", WARN, f"/dev/kvm: {exc.strerror}; isobox uses TCG",
                     f"{TCG_HINT}; run as root or join the kvm group")
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return Check("kvm", WARN, f"/dev/kvm does not answer KVM_GET_API_VERSION ({exc.strerror})", TCG_HINT)
    finally:
        os.close(fd)
    vendor = next((m for m in ("kvm_intel", "kvm_amd") if os.path.isdir(f"/sys/module/{m}")), None)
    if api != KVM_API_VERSION:
        return Check("kvm", WARN, f"KVM API version {api}, isobox knows {KVM_API_VERSION}; isobox uses TCG", TCG_HINT)
    if vendor is None:
        return Check("kvm", WARN, "/dev/kvm from neither kvm_intel nor kvm_amd; isobox uses TCG", TCG_HINT)
    return Check("kvm", OK, f"KVM API {api} ({vendor})")


_CONTROLLER_ORDER = ("memory", "cpu", "cpuacct", "pids", "devices", "freezer", "cpuset", "io", "blkio", "hugetlb")


def check_cgroups() -> Check:
    mounts = _mounts()
    known = _proc_cgroups()
    v2_root = any(m == "/sys/fs/cgroup" and fs == "cgroup2" for m, fs, _ in mounts)
    unified = next((m for m, fs, _ in mounts if fs == "cgroup2" and m != "/sys/fs/cgroup"), None)
    v1 = {opt for _, fs, opts in mounts if fs == "cgroup" for opt in opts if opt in known}
    needed: tuple[str, ...]
    if v2_root:
        # v2 has no devices controller: device rules are a BPF program on the cgroup.
        version, controllers, needed = "v2", _read_words("/sys/fs/cgroup/cgroup.controllers"), ("memory", "cpu", "pids")
    elif v1:
        version = "v1 (hybrid)" if unified else "v1"
        controllers = v1 | (_read_words(f"{unified}/cgroup.controllers") if unified else set())
        needed = ("memory", "cpu", "pids", "devices")
    else:
        return Check("cgroups", MISSING, "no cgroup filesystem mounted",
                     "mount cgroup2 on /sys/fs/cgroup (systemd does it at boot)")
    ordered = [c for c in _CONTROLLER_ORDER if c in controllers] + sorted(controllers - set(_CONTROLLER_ORDER))
    detail = f"{version}: {' '.join(ordered) or 'no controllers'}"
    lacking = [c for c in needed if c not in controllers]
    if lacking:
        return Check("cgroups", WARN, detail,
                     f"enable the {' '.join(lacking)} controller(s): --memory/--cpus/--pids-limit need them"
                     + (" (memory: cgroup_enable=memory on the kernel command line)" if "memory" in lacking else ""))
    return Check("cgroups", OK, detail)


def check_seccomp() -> Check:
    if _proc_status_field("Seccomp") is None:
        return Check("seccomp", MISSING, "kernel without seccomp (no Seccomp in /proc/self/status)",
                     "use a kernel built with CONFIG_SECCOMP_FILTER; containers would run without a syscall filter")
    version = _libseccomp_version()
    if version is None:
        return Check("seccomp", MISSING, "kernel has seccomp, but libseccomp.so.2 is not loadable",
                     "apt-get install libseccomp2")
    filters = _proc_status_field("Seccomp_filters") is not None
    return Check("seccomp", OK, f"kernel seccomp{' filters' if filters else ''}; libseccomp {version}")


def check_user_namespaces() -> Check:
    limit = _read_int("/proc/sys/user/max_user_namespaces")
    if limit is None or not os.path.exists("/proc/self/ns/user"):
        return Check("user_namespaces", MISSING, "kernel without user namespaces",
                     "needed later for unprivileged containers (CONFIG_USER_NS)")
    if limit <= 0:
        return Check("user_namespaces", MISSING, "disabled: user.max_user_namespaces = 0",
                     "sysctl -w user.max_user_namespaces=15000")
    # (sysctl, value that restricts unprivileged use, value that lifts it)
    restrictions = [
        (name, lift) for name, bad, lift in (
            ("kernel.unprivileged_userns_clone", 0, 1),
            ("kernel.apparmor_restrict_unprivileged_userns", 1, 0),
        ) if _read_int("/proc/sys/" + name.replace(".", "/")) == bad
    ]
    if restrictions:
        return Check("user_namespaces", WARN,
                     f"max {limit}; unprivileged use restricted by {', '.join(n for n, _ in restrictions)}",
                     "root is unaffected; rootless use needs: sysctl -w "
                     + " ".join(f"{n}={v}" for n, v in restrictions))
    return Check("user_namespaces", OK, f"max {limit}; unprivileged use allowed")


def check_overlayfs() -> Check:
    if "overlay" in _read_words("/proc/filesystems"):
        return Check("overlayfs", OK, "overlay in /proc/filesystems")
    base = f"/lib/modules/{os.uname().release}/kernel/fs/overlayfs/overlay.ko"
    if any(os.path.exists(base + ext) for ext in ("", ".xz", ".zst", ".gz")):
        return Check("overlayfs", OK, "overlay module available (loaded on first mount)")
    return Check("overlayfs", MISSING, "no overlay filesystem",
                 "modprobe overlay (the kernel needs CONFIG_OVERLAY_FS); container roots are overlays")


def check_pidfd() -> Check:
    release = os.uname().release
    try:
        fd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError) as exc:
        reason = errno.errorcode.get(getattr(exc, "errno", 0) or 0, str(exc))
        return Check("pidfd", MISSING, f"pidfd_open fails ({reason}) on kernel {release}",
                     "kernel >= 5.3 lets isobox track workloads by pidfd; it falls back to pid + start time")
    os.close(fd)
    return Check("pidfd", OK, f"pidfd_open works (kernel {release})")


def check_cgroup_ns() -> Check:
    if os.path.exists("/proc/self/ns/cgroup"):
        return Check("cgroup_ns", OK, "/proc/self/ns/cgroup present")
    return Check("cgroup_ns", MISSING, "no cgroup namespaces", "kernel >= 4.6 with CONFIG_CGROUPS")


# -- programs -------------------------------------------------------------------------------------


def check_busybox_static(path: str = "/bin/busybox") -> Check:
    if not os.path.isfile(path):
        return Check("busybox_static", MISSING, f"{path} absent (the busybox image is made from it)",
                     "apt-get install busybox-static")
    if _elf_is_dynamic(path):
        return Check("busybox_static", WARN, f"{path} is dynamically linked: it will not run in an image",
                     "apt-get install busybox-static")
    return Check("busybox_static", OK, f"{path} (static)")


def check_qemu(version: Callable[[str], str | None]) -> Check:
    return _program("qemu", "qemu-system-x86_64", "apt-get install qemu-system-x86", version,
                    optional=True, needed_for="--isolation vm")


def check_qemu_img() -> Check:
    return _program("qemu_img", "qemu-img", "apt-get install qemu-utils", optional=True,
                    needed_for="VM root disks")


def check_ovmf() -> Check:
    found = sorted(glob.glob("/usr/share/OVMF/OVMF_CODE*.fd"))
    if not found:
        return Check("ovmf", MISSING, "no UEFI firmware (/usr/share/OVMF/OVMF_CODE*.fd)",
                     "apt-get install ovmf (only UEFI guests need it)", optional=True)
    names = [os.path.basename(f) for f in found]
    return Check("ovmf", OK, f"/usr/share/OVMF: {', '.join(names[:3])}" + (" ..." if len(names) > 3 else ""),
                 optional=True)


def check_runsc(version: Callable[[str], str | None]) -> Check:
    return _program("runsc", "runsc", "apt-get install runsc", version, optional=True,
                    needed_for="--isolation gvisor")


def check_runc() -> Check:
    return _program("runc", "runc", "apt-get install runc", optional=True, needed_for="benchmarks")


def check_podman() -> Check:
    return _program("podman", "podman", "apt-get install podman", optional=True, needed_for="benchmarks")


def _program(name: str, binary: str, hint: str, version: Callable[[str], str | None] | None = None,
             optional: bool = False, needed_for: str = "") -> Check:
    path = shutil.which(binary)
    if path is None:
        why = f" ({needed_for} needs it)" if needed_for else ""
        return Check(name, MISSING, f"{binary} not found{why}", hint, optional)
    text = version(binary) if version else None
    return Check(name, OK, f"{path}" + (f": {text}" if text else ""), None, optional)


class _Versions:
    """``--version`` of a few programs, started together and read on demand; cached per binary."""

    _cache: dict[tuple[str, int, int], str | None] = {}
    _lock = threading.Lock()

    def __init__(self, binaries: tuple[str, ...]) -> None:
        self._known: dict[str, str | None] = {}
        self._running: dict[str, tuple[tuple[str, int, int], subprocess.Popen[str]]] = {}
        for binary in binaries:
            path = shutil.which(binary)
            if path is None:
                continue
            st = os.stat(path)
            key = (path, st.st_ino, st.st_mtime_ns)
            with self._lock:
                if key in self._cache:
                    self._known[binary] = self._cache[key]
                    continue
            try:
                proc = subprocess.Popen([path, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, close_fds=True)
            except OSError:
                self._known[binary] = None
                continue
            self._running[binary] = (key, proc)

    def get(self, binary: str) -> str | None:
        if binary in self._known:
            return self._known[binary]
        if binary not in self._running:
            return None
        key, proc = self._running.pop(binary)
        try:
            out, _ = proc.communicate(timeout=VERSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out = ""
        text = _short_version(out)
        with self._lock:
            self._cache[key] = text
        self._known[binary] = text
        return text


def _short_version(out: str) -> str | None:
    """``QEMU emulator version 7.2.22 (Debian ...)`` -> ``QEMU 7.2.22 (Debian ...)``."""
    first = out.strip().splitlines()[0] if out.strip() else ""
    return first.replace("emulator version ", "").replace(" version ", " ") or None


# -- reading the system ---------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_words(path: str) -> set[str]:
    return set((_read(path) or "").split())


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _os_release() -> dict[str, str]:
    text = _read("/etc/os-release") or _read("/usr/lib/os-release") or ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, options) from /proc/self/mounts."""
    result = []
    for line in (_read("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            result.append((parts[1], parts[2], parts[3].split(",")))
    return result


def _proc_cgroups() -> set[str]:
    """v1 controller names the kernel knows and has enabled."""
    names = set()
    for line in (_read("/proc/cgroups") or "").splitlines():
        parts = line.split()
        if len(parts) == 4 and not line.startswith("#") and parts[3] == "1":
            names.add(parts[0])
    return names


def _proc_status_field(name: str) -> str | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


class _ScmpVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def _libseccomp_version() -> str | None:
    # dlopen the soname directly: ctypes.util.find_library would run ldconfig in a subprocess.
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return None
    try:
        func = lib.seccomp_version
    except AttributeError:  # libseccomp < 2.3
        return "2 (< 2.3)"
    func.restype = ctypes.POINTER(_ScmpVersion)
    v = func().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def _elf_is_dynamic(path: str) -> bool:
    """True if the ELF64 little-endian file at ``path`` has a PT_INTERP program header."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return False  # not an ELF64 LE binary: nothing to say
            phoff = int.from_bytes(header[32:40], "little")
            phentsize = int.from_bytes(header[54:56], "little")
            phnum = int.from_bytes(header[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return any(
        int.from_bytes(table[i : i + 4], "little") == pt_interp for i in range(0, len(table), phentsize or 56)
    )

