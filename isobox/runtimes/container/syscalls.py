"""The container runtime's namespace, mount and process syscalls, one small typed wrapper each.

Everything here runs as root in a forked, single-threaded child (or the monitor).  Python 3.11's
``os`` module lacks unshare/setns/mount/pivot_root/openat2, so they go through libc via ctypes;
a failing call raises ``OSError`` with its errno, so callers can explain known errnos.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from isobox.errors import InvalidArgument, RuntimeFailure

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# <linux/seccomp.h>, <linux/filter.h>
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_MAXINSNS = 4096
SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k

# <linux/openat2.h>
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

# x86_64 syscall numbers for calls glibc 2.36 does not wrap.
SYS_pivot_root = 155
SYS_close_range = 436
SYS_openat2 = 437
SYS_pidfd_open = 434
SYS_process_madvise = 440
MADV_PAGEOUT = 21


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join namespaces; with a pidfd, several at once (Linux >= 5.8)."""
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    result = libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    _check(result, f"mount {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc.syscall(SYS_pivot_root, new_root.encode(), put_old.encode()), "pivot_root")


def prctl(option: int, arg2: int = 0) -> None:
    _check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), 0, 0, 0), f"prctl({option})")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(on: bool) -> None:
    prctl(PR_SET_DUMPABLE, int(on))


def close_range_from(first: int, keep: tuple[int, ...] = ()) -> None:
    """Close every fd >= first except ``keep`` (runc CVE-2024-21626: no host fd reaches the workload)."""
    start = first
    for fd in sorted(k for k in keep if k >= first):
        if fd > start:
            _close_range(start, fd - 1)
        start = fd + 1
    _close_range(start, 0xFFFFFFFF)


def _close_range(first: int, last: int) -> None:
    if libc.syscall(SYS_close_range, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)) < 0:
        os.closerange(first, min(last, 65536))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = libc.syscall(SYS_openat2, ctypes.c_int(dirfd), path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    return _check(fd, f"openat2 {path}")


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open ``path`` as if ``root_fd`` were ``/``: symlinks and ``..`` cannot leave it (CVE-2021-30465)."""
    return openat2(root_fd, path.lstrip("/") or ".", flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def mkdir_in_root(root_fd: int, path: str, mode: int = 0o755, as_file: bool = False) -> int:
    """Create ``path`` (and missing parents) inside the root; returns an O_PATH fd of it.

    Each component is resolved from the root again, so a symlink planted by the image can
    redirect the path only to somewhere else inside the root, never out of it.
    """
    try:  # the common case: it exists, one lookup instead of one per component
        return open_in_root(root_fd, path)
    except FileNotFoundError:
        pass
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    for index, part in enumerate(parts):
        done.append(part)
        last = index == len(parts) - 1
        try:
            fd = open_in_root(root_fd, "/".join(done))
        except FileNotFoundError:
            parent = open_in_root(root_fd, "/".join(done[:-1]))
            try:
                if last and as_file:
                    flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                    os.close(os.open(part, flags, 0o644, dir_fd=parent))
                else:
                    os.mkdir(part, mode, dir_fd=parent)
            except FileExistsError:
                pass
            finally:
                os.close(parent)
            fd = open_in_root(root_fd, "/".join(done))
        if last:
            return fd
        os.close(fd)
    return open_in_root(root_fd, ".")


def detach_mounts_under(root: str) -> None:
    """Lazily detach every mount below ``root``, deepest first (cleanup after a failure)."""
    prefix = root.rstrip("/") + "/"
    points = set()
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    points.add(point)
    except OSError:
        return
    for point in sorted(points, key=len, reverse=True):
        try:  # noqa: SIM105 - contextlib is not imported on the OCI start-up path
            umount2(point, MNT_DETACH)
        except OSError:
            pass


def fd_path(fd: int) -> str:
    """The magic-link path through which mount(2) reaches exactly the object behind ``fd``."""
    return f"/proc/self/fd/{fd}"


def pidfd_open(pid: int) -> int:
    return os.pidfd_open(pid)


def pidfd_of(pid: int | None, start: int | None) -> int | None:
    """A pidfd on ``pid`` if it is still the process that started at ``start`` (not a reuse)."""
    if not pid:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if start and process_start_time(pid) != start:
        os.close(pidfd)
        return None
    return pidfd


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, identifies a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def seccomp_program(bpf: bytes) -> tuple[ctypes.Array[ctypes.c_char], _SockFprog]:
    """The ``struct sock_fprog`` for ``bpf`` and the buffer it points into (keep both alive)."""
    count, rest = divmod(len(bpf), SOCK_FILTER_SIZE)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise InvalidArgument(f"not a seccomp BPF program: {len(bpf)} bytes")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    return buf, _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))


def install_seccomp(bpf: bytes) -> None:
    """Load ``bpf`` (from ``seccomp.compile_bpf``) as a seccomp filter on the calling thread.

    Meant for the single-threaded forked child: the filter applies to this thread and what it
    execs, and other threads would escape it.  The kernel requires no_new_privs to be set or
    CAP_SYS_ADMIN in the effective set (so that a filter cannot fool a setuid binary).  (Here
    rather than in seccomp.py, whose libseccomp binding the child has no use for.)
    """
    buf, prog = seccomp_program(bpf)
    if libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                  ctypes.c_ulong(ctypes.addressof(prog)), ctypes.c_ulong(0), ctypes.c_ulong(0)) < 0:
        err = ctypes.get_errno()
        hint = None
        if err == errno.EACCES:
            hint = "set no_new_privs first, or load the filter while holding CAP_SYS_ADMIN"
        elif err == errno.EINVAL:
            hint = "the kernel rejected the program, or was built without CONFIG_SECCOMP_FILTER"
        raise RuntimeFailure(f"loading the seccomp filter: {os.strerror(err)}", hint=hint) from OSError(
            err, os.strerror(err)
        )


def sethostname(name: str) -> None:
    data = os.fsencode(name)
    _check(libc.sethostname(data, ctypes.c_size_t(len(data))), "sethostname")


def loopback_up() -> None:
    """Bring ``lo`` up in a new network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS, no netlink needed).

    The socket comes from libc rather than the socket module: importing that (and the enum
    module it needs) costs more than this whole function on the OCI runtime's start-up path.
    """
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    af_inet, sock_dgram, sock_cloexec = 2, 2, 0o2000000
    sock = _check(libc.socket(af_inet, sock_dgram | sock_cloexec, 0), "socket")
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, siocgifflags, req))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
    finally:
        os.close(sock)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def pageout(pid: int, ranges: list[tuple[int, int]]) -> int:
    """process_madvise(MADV_PAGEOUT) over ``ranges`` (address, length) of process ``pid``:
    reclaim those pages now (clean file pages are dropped; anonymous ones need swap).  Returns
    the bytes advised.  Needs CAP_SYS_NICE and ptrace access to ``pid`` (root)."""
    iov = (_IoVec * len(ranges))(*(_IoVec(addr, size) for addr, size in ranges))
    pidfd = os.pidfd_open(pid)
    try:
        return _check(libc.syscall(SYS_process_madvise, pidfd, iov, ctypes.c_size_t(len(ranges)),
                                   MADV_PAGEOUT, 0), "process_madvise")
    finally:
        os.close(pidfd)


def explain(exc: OSError) -> str:
    """A user-facing explanation for the errnos that have a known cause here."""
    hints = {
        errno.EPERM: "operation not permitted (is isobox running as root?)",
        errno.ENOSYS: "not implemented by this kernel, or blocked by a seccomp filter",
        errno.EINVAL: "invalid argument (kernel feature missing or not enabled?)",
    }
    return f"{exc.strerror or exc}" + (f" — {hints[exc.errno]}" if exc.errno in hints else "")
