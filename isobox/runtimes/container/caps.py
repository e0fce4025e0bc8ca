"""Linux capabilities: names, Docker's --cap-add/--cap-drop arithmetic, and applying a set.

Names are kept without the ``CAP_`` prefix and in upper case (``"NET_ADMIN"``).  Applying runs
in the forked child that becomes the container process; see ``apply`` for the order.
"""

from __future__ import annotations

import ctypes
import os

from isobox.errors import InvalidArgument

TYPE_CHECKING = False  # (no typing/collections/functools imports: the OCI runtime's start-up path)
if TYPE_CHECKING:
    from collections.abc import Iterable

# include/uapi/linux/capability.h
CAPS: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

# Podman's default set (containers/common containers.conf).  Docker adds MKNOD, NET_RAW, AUDIT_WRITE.
DEFAULT_CAPS: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)

ALL = "ALL"

# prctl(2) and capget(2) constants
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
libc.prctl.restype = ctypes.c_int


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_CapDataPair = _CapData * 2  # version 3: two 32-bit words per set

libc.capget.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
libc.capget.restype = ctypes.c_int
libc.capset.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
libc.capset.restype = ctypes.c_int


def oserror(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _normalize(name: str) -> str:
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def _validated(names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        norm = _normalize(name)
        if norm != ALL and norm not in CAPS:
            raise InvalidArgument(f'unknown capability "{name}"', hint="see capabilities(7) for the names")
        out.append(norm)
    return out


_last_cap: list[int] = []  # what last_cap() read, once per process


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    if not _last_cap:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _last_cap.append(int(f.read()))
        except OSError:
            _last_cap.append(max(CAPS.values()))
    return _last_cap[0]


def all_caps() -> list[str]:
    """Every capability the running kernel knows (what ``--cap-add ALL`` grants)."""
    top = last_cap()
    return [name for name, num in CAPS.items() if num <= top]


def resolve(add: Iterable[str], drop: Iterable[str], base: Iterable[str] = DEFAULT_CAPS) -> list[str]:
    """The capability set after ``--cap-add``/``--cap-drop``, with Docker's precedence.

    ``add ALL`` grants everything except the dropped ones (and wins over ``drop ALL``);
    ``drop ALL`` starts from nothing and keeps only the added ones; otherwise drops apply to
    ``base`` first and adds afterwards (so a capability both added and dropped is kept).
    """
    adds, drops = _validated(add), _validated(drop)
    if ALL in adds:
        result = {c for c in all_caps() if c not in drops}
    elif ALL in drops:
        result = set(adds)
    else:
        result = {c for c in _validated(base) if c not in drops} | set(adds)
    return sorted(result)


def mask(names: Iterable[str]) -> int:
    """The capability bit mask of ``names`` (as in /proc/PID/status)."""
    bits = 0
    for name in _validated(names):
        bits |= (1 << CAPS[name]) if name != ALL else sum(1 << CAPS[c] for c in all_caps())
    return bits


def current_set(field: str = "CapEff", pid: int | str = "self") -> int:
    """One capability set of a process from /proc/PID/status: CapInh, CapPrm, CapEff, CapBnd, CapAmb."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == field:
                return int(value.strip(), 16)
    raise KeyError(field)


def current_effective() -> int:
    return current_set("CapEff")


def keep_caps_across_setuid() -> None:
    """Keep the permitted set through setuid() to a non-zero uid, so ``apply`` can still work."""
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0:
        oserror("prctl(PR_SET_KEEPCAPS)")


def capbset_drop(cap: int) -> None:
    if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
        oserror(f"prctl(PR_CAPBSET_DROP, {cap})")


def ambient_clear_all() -> None:
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0:
        oserror("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def ambient_raise(cap: int) -> None:
    """Add ``cap`` to the ambient set (it must be permitted and inheritable already)."""
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0:
        oserror(f"prctl(PR_CAP_AMBIENT_RAISE, {cap})")


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    if libc.capget(ctypes.byref(header), data) < 0:
        oserror("capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for word in (0, 1):
        shift = 32 * word
        data[word].effective = (effective >> shift) & 0xFFFFFFFF
        data[word].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[word].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) < 0:
        oserror("capset")


def drop_bounding(names: Iterable[str]) -> None:
    """Drop every capability not in ``names`` from the bounding set (needs CAP_SETPCAP)."""
    keep = mask(names)
    for cap in range(last_cap() + 1):
        if not keep & (1 << cap):
            capbset_drop(cap)


def apply(names: Iterable[str], root_user: bool) -> None:
    """Leave the calling (single-threaded, forked) process with exactly ``names``.

    Runs after setgroups/setgid/setuid with PR_SET_KEEPCAPS=1, so the permitted set is still
    full but, for a non-root uid, the effective set is empty: first raise effective again
    (PR_CAPBSET_DROP needs CAP_SETPCAP), then shrink the bounding set, clear the ambient set
    and set the final sets.  A non-root workload gets empty effective/permitted sets, as it
    would lose them at execve anyway; the inheritable set is always empty (Docker's fix for
    CVE-2022-24769: an inheritable set let file capabilities of a binary in the image grant
    more than the container's set to a non-root user).
    """
    names = list(names)
    wanted = mask(names) & ((1 << (last_cap() + 1)) - 1)
    _, permitted, _ = capget()
    capset(permitted, permitted, 0)
    drop_bounding(names)
    ambient_clear_all()
    final = wanted if root_user else 0
    capset(final, final, 0)
