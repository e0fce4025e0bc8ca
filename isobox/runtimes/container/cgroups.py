"""Container cgroups on cgroup v1 (legacy/hybrid) and cgroup v2 (unified).

One :class:`Cgroup` is one container's control group: a directory per v1 hierarchy
(memory, cpu, cpuacct, pids, devices, freezer) or one directory on v2, all named
``<parent>/<name>``. The runtime calls ``detect()`` once, keeps the :class:`Layout`, then per
container ``Cgroup.create(...)`` + ``join(pid)`` at start and ``kill_all()`` + ``destroy()`` at the end.

Kernel documentation: Documentation/admin-guide/cgroup-v1/{memory,cpuacct,pids,devices,freezer-subsystem}
and Documentation/admin-guide/cgroup-v2.rst.

Every write goes through :func:`_write`, which turns an ``OSError`` into a ``RuntimeFailure`` naming
the file, the value and the errno. ``create`` is all or nothing: on any failure it removes every
directory it made (including parent directories it had to make) before raising.

Directories are made and removed through ``_mkdir``/``_rmdir``: on cgroupfs ``mkdir`` populates the
interface files and ``rmdir`` removes a directory that still holds them, which plain file systems
don't do; unit tests replace these two with a fake that does.

Paths keep the type they are given: :func:`detect` with ``Path`` arguments (the default, and what
the daemon uses) gives ``Path`` objects everywhere, with ``str`` arguments plain strings.  The
OCI runtime, a new process per engine call, takes the latter: this module imports neither
pathlib nor re, dataclasses, functools or signal on its start-up path (they cost more there
than creating the cgroup).
"""

from __future__ import annotations

import errno
import os
import time

from isobox.errors import InvalidArgument, NotFound, RuntimeFailure
from isobox.runtimes.container.records import dataclass  # (no dataclasses import: records.py)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    StrPath = str | Path

CPU_PERIOD_US = 100_000
"""CFS period (runc's and Docker's default): ``--cpus 0.5`` is a 50 ms quota every 100 ms."""
CPU_MIN_QUOTA_US = 1_000
"""The kernel refuses a CFS quota below 1 ms."""

PARENT_ENV = "ISOBOX_CGROUP_PARENT"
DEFAULT_PARENT = "isobox"

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "devices", "freezer")
"""v1 hierarchies a container gets a directory in (cpuset is left alone: a new cpuset cgroup needs
cpuset.cpus/cpuset.mems copied in before it can take a process, and isobox sets no cpuset)."""
V2_CONTROLLERS = ("memory", "cpu", "pids")
"""Controllers enabled in ``cgroup.subtree_control`` down to the container's parent on v2."""

_KNOWN_V1 = frozenset(
    {"cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls", "perf_event", "net_prio"}
    | {"hugetlb", "pids", "rdma", "misc", "debug"}
)
# A v1 limit reads as PAGE_COUNTER_MAX pages (9223372036854771712 on x86-64) when unlimited.
_V1_UNLIMITED = 1 << 62

# A valid name: [A-Za-z0-9_][A-Za-z0-9_.@:+=-]{0,254}
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_REST = _NAME_FIRST | frozenset(".@:+=-")
SIGKILL = 9  # (POSIX fixes it; the signal module would pull enum onto the OCI start-up path)

_mkdir = os.mkdir
_rmdir = os.rmdir


# --- devices and limits --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRule:
    """One device cgroup rule, e.g. ``DeviceRule("c", 1, 3, "rwm")``; ``None`` major/minor is ``*``.

    ``kind`` is ``c`` (char), ``b`` (block) or ``a`` (all); ``access`` a subset of ``rwm``
    (read, write, mknod).
    """

    kind: str
    major: int | None
    minor: int | None
    access: str

    def __post_init__(self) -> None:
        if self.kind not in ("a", "b", "c"):
            raise InvalidArgument(f"invalid device rule type {self.kind!r}", hint="use 'c', 'b' or 'a'")
        if not self.access or set(self.access) - set("rwm") or len(set(self.access)) != len(self.access):
            raise InvalidArgument(f"invalid device access {self.access!r}", hint="use a subset of 'rwm'")
        for number in (self.major, self.minor):
            if number is not None and (isinstance(number, bool) or number < 0):
                raise InvalidArgument(f"invalid device number {number!r} in a device rule")

    def __str__(self) -> str:
        """The v1 ``devices.allow`` syntax: ``c 1:3 rwm``, ``c 136:* rwm``."""
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor} {self.access}"

    @property
    def allows_everything(self) -> bool:
        return self.kind == "a" and set(self.access) == set("rwm")


DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    # mknod of any device is allowed, using one is not (as Podman and runc do) ...
    DeviceRule("c", None, None, "m"),
    DeviceRule("b", None, None, "m"),
    # ... except the minimal /dev every container gets.
    DeviceRule("c", 1, 3, "rwm"),  # null
    DeviceRule("c", 1, 5, "rwm"),  # zero
    DeviceRule("c", 1, 7, "rwm"),  # full
    DeviceRule("c", 1, 8, "rwm"),  # random
    DeviceRule("c", 1, 9, "rwm"),  # urandom
    DeviceRule("c", 5, 0, "rwm"),  # tty
    DeviceRule("c", 5, 2, "rwm"),  # ptmx
    DeviceRule("c", 136, None, "rwm"),  # pts/*
)

ALLOW_ALL_DEVICES: tuple[DeviceRule, ...] = (DeviceRule("a", None, None, "rwm"),)
"""``--privileged``: the device allow-list that lifts device control."""


@dataclass
class Limits:
    """What a container may use. ``None`` means unlimited.

    ``devices`` is an allow-list applied after denying every device: ``()`` denies them all,
    :data:`ALLOW_ALL_DEVICES` lifts the restriction.
    """

    memory: int | None = None
    """Bytes of RAM; swap is disabled beyond it (v1 memsw = memory, v2 memory.swap.max = 0)."""
    cpus: float | None = None
    """CPUs' worth of time per CFS period (quota = cpus * 100000 us)."""
    pids: int | None = None
    devices: tuple[DeviceRule, ...] = DEFAULT_DEVICE_RULES
    memory_swap: int | None = None
    """Bytes of RAM + swap (Docker's --memory-swap); ``None``: no swap beyond ``memory``, -1: unlimited."""

    def validate(self) -> None:
        if self.memory is not None and (isinstance(self.memory, bool) or self.memory <= 0):
            raise InvalidArgument(
                f"invalid memory limit {self.memory!r}", hint="give a positive number of bytes"
            )
        if self.cpus is not None and not (self.cpus > 0 and self.cpu_quota_us() >= CPU_MIN_QUOTA_US):
            raise InvalidArgument(f"invalid cpus limit {self.cpus!r}", hint="the smallest is 0.01")
        if self.pids is not None and (isinstance(self.pids, bool) or self.pids < 1):
            raise InvalidArgument(f"invalid pids limit {self.pids!r}", hint="give at least 1, or no limit")
        for rule in self.devices:
            if not isinstance(rule, DeviceRule):
                raise InvalidArgument(f"invalid device rule {rule!r}")

    def cpu_quota_us(self) -> int:
        assert self.cpus is not None
        return round(self.cpus * CPU_PERIOD_US)

    @property
    def devices_unrestricted(self) -> bool:
        return any(rule.allows_everything for rule in self.devices)


# --- layout detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the cgroup file systems are. Detect once with :func:`detect` and keep it."""

    version: int
    """1 (legacy or hybrid) or 2 (unified)."""
    root: StrPath
    mounts: dict[str, StrPath]
    """v1: controller -> hierarchy mount (co-mounted controllers share one); v2: ``{"unified": root}``."""
    controllers: frozenset[str]

    def hierarchies(self, controllers: tuple[str, ...] | None = None) -> list[StrPath]:
        """Distinct hierarchy directories (of the given controllers, all by default), in order."""
        if self.version == 2:
            return [self.root]
        names = controllers if controllers is not None else tuple(self.mounts)
        return list(dict.fromkeys(self.mounts[c] for c in names if c in self.mounts))


@dataclass(frozen=True)
class _Mount:
    point: StrPath
    fstype: str
    options: frozenset[str]


def detect(root: StrPath | None = None, mountinfo: StrPath | None = None) -> Layout:
    """Find the cgroup layout under ``root``.

    v2 when ``root`` itself is a cgroup2 mount; v1 when v1 hierarchies are mounted below it (a hybrid
    host's empty cgroup2 at ``root/unified`` is ignored: it carries no controllers). Mounts come from
    ``mountinfo``; if it can't be read or names nothing under ``root``, the tree itself is probed.
    The defaults are ``Path("/sys/fs/cgroup")`` and ``Path("/proc/self/mountinfo")``.
    """
    if root is None or mountinfo is None:
        from pathlib import Path  # noqa: PLC0415 - see the module docstring

        root = Path("/sys/fs/cgroup") if root is None else root
        mountinfo = Path("/proc/self/mountinfo") if mountinfo is None else mountinfo
    root = type(root)(os.path.abspath(root))
    try:
        with open(mountinfo) as f:
            text = f.read()
    except OSError:
        text = ""
    layout = _layout_from_mounts(root, _cgroup_mounts(text, type(root))) or _layout_from_tree(root)
    if layout is None:
        raise RuntimeFailure(
            f"no cgroup file system found at {root}",
            hint="mount cgroup2 there (mount -t cgroup2 none /sys/fs/cgroup) or the v1 controllers below it",
        )
    return layout


_host_layout: list[Layout] = []


def host_layout() -> Layout:
    """The host's layout (``Path`` based), detected on first use and cached for the life of the process."""
    if not _host_layout:
        _host_layout.append(detect())
    return _host_layout[0]


def _join(base: StrPath, *parts: str) -> StrPath:
    """``base / part / ...``, of ``base``'s type (``Path`` or ``str``)."""
    return os.path.join(base, *parts) if isinstance(base, str) else base.joinpath(*parts)


def _is_below(path: StrPath, root: StrPath) -> bool:
    """``root in Path(path).parents`` for normalized absolute paths."""
    path, root = os.fspath(path), os.fspath(root)
    return path != root and path.startswith(root.rstrip("/") + "/")


def _depth(path: StrPath) -> int:
    """``len(Path(path).parts)`` for a normalized absolute path."""
    return 1 + sum(1 for part in os.fspath(path).split("/") if part)


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field_text:
        return field_text
    import re  # noqa: PLC0415 - see the module docstring

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def _cgroup_mounts(text: str, kind: type[StrPath]) -> list[_Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = kind(_unescape(fields[4]))
        mounts.append(_Mount(point, tail[0], frozenset(tail[2].split(","))))
    return mounts


def _read_controllers(path: StrPath) -> frozenset[str]:
    try:
        with open(path) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def _layout_from_mounts(root: StrPath, mounts: list[_Mount]) -> Layout | None:
    if any(m.fstype == "cgroup2" and m.point == root for m in mounts):
        return _v2_layout(root)
    found: dict[str, StrPath] = {}
    # Prefer a hierarchy's mount right below root over another mount of the same hierarchy elsewhere.
    for mount in sorted(mounts, key=lambda m: _depth(m.point)):
        if mount.fstype != "cgroup" or not _is_below(mount.point, root):
            continue
        for controller in sorted(mount.options & _KNOWN_V1):
            found.setdefault(controller, mount.point)
    if not found:
        return None
    return Layout(1, root, found, frozenset(found))


def _layout_from_tree(root: StrPath) -> Layout | None:
    if os.path.isfile(_join(root, "cgroup.controllers")):
        return _v2_layout(root)
    found: dict[str, StrPath] = {}
    try:
        # Real directories first, so 'cpu' -> 'cpu,cpuacct' symlinks map to the combined mount.
        entries = sorted(os.scandir(root), key=lambda e: (e.is_symlink(), e.name))
    except OSError:
        return None
    for entry in entries:
        path = type(root)(entry.path)
        if not os.path.isfile(_join(path, "cgroup.procs")):
            continue
        for controller in entry.name.split(","):
            if controller in _KNOWN_V1:
                found.setdefault(controller, path)
    if not found:
        return None
    return Layout(1, root, found, frozenset(found))


def _v2_layout(root: StrPath) -> Layout:
    return Layout(2, root, {"unified": root}, _read_controllers(_join(root, "cgroup.controllers")))


# --- file helpers --------------------------------------------------------------------------------

_HINTS = {
    errno.ENOENT: "the controller or interface file is missing: is the controller enabled in this kernel?",
    errno.EACCES: "cgroups need root (or a delegated subtree)",
    errno.EPERM: "cgroups need root (or a delegated subtree)",
    errno.EROFS: "the cgroup file system is mounted read-only (inside another container?)",
    errno.EBUSY: "processes or child cgroups are still in it",
    errno.EINVAL: "the kernel rejected the value (out of range, below current usage, or beyond the parent's limit?)",
    errno.ENOSPC: "the cgroup hierarchy is full (cgroup.max.descendants/depth)",
    errno.EEXIST: "a cgroup of this name exists already: a leftover of a crashed container? remove it",
    errno.EOPNOTSUPP: "the controller cannot be enabled here (cgroup v2 'no internal processes' rule?)",
}


def _failure(action: str, path: StrPath, exc: OSError, hints: dict[int, str] | None = None) -> RuntimeFailure:
    code = exc.errno or 0
    name = errno.errorcode.get(code, str(code))
    hint = (hints or {}).get(code) or _HINTS.get(code)
    return RuntimeFailure(f"cannot {action} {path}: {os.strerror(code)} [{name}]", hint=hint)


def _write(path: StrPath, value: str, hints: dict[int, str] | None = None) -> None:
    """Write one value to one cgroup interface file (one write(2), as the kernel wants)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise _failure(f"write {value!r} to", path, exc, hints) from exc


def _read(path: StrPath) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise _failure("read", path, exc) from exc


def _read_optional(path: StrPath) -> str | None:
    """Read a file that older kernels or a disabled controller may not have."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _failure("read", path, exc) from exc


def _keyed(text: str | None) -> dict[str, int]:
    """Parse 'key value' lines (memory.stat, memory.events, cpu.stat, memory.oom_control)."""
    values = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def _limit(text: str | None) -> int | None:
    """'max' (v2), PAGE_COUNTER_MAX (v1), -1 or a missing file mean no limit."""
    if text is None or text.strip() in ("max", "-1", ""):
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def _check_name(name: str, what: str = "cgroup name") -> str:
    if not isinstance(name, str) or not (
            0 < len(name) <= 255 and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name)):
        raise InvalidArgument(
            f"invalid {what} {name!r}",
            hint="use letters, digits and '_ . @ : + = -', start with a letter, digit or '_', "
            "no '/' or '..', at most 255 characters",
        )
    return name


def _parent_parts(parent: str | None) -> tuple[str, ...]:
    if parent is None:
        parent = os.environ.get(PARENT_ENV, DEFAULT_PARENT)
    parts = tuple(p for p in parent.split("/") if p)
    if not parts:
        raise InvalidArgument(f"invalid cgroup parent {parent!r}", hint=f"e.g. {DEFAULT_PARENT!r}")
    for part in parts:
        _check_name(part, "cgroup parent component")
    return parts


def _make_ancestors(base: StrPath, parts: tuple[str, ...], created: list[StrPath]) -> None:
    """mkdir base/parts[0], base/parts[0]/parts[1], ... as needed, recording what was made."""
    path = base
    for part in parts:
        path = _join(path, part)
        try:
            _mkdir(path)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _failure("create cgroup", path, exc) from exc
        created.append(path)


_SUBTREE_HINTS = {
    errno.EBUSY: "processes live in this cgroup itself (cgroup v2's 'no internal processes' rule): "
    "choose an ISOBOX_CGROUP_PARENT that holds no processes, e.g. a sibling of the daemon's own cgroup",
    errno.ENOENT: "the controller is not available in this cgroup (not delegated by its parent)",
}


def _enable_controllers(root: StrPath, parts: tuple[str, ...], wanted: list[str]) -> None:
    """Enable ``wanted`` in cgroup.subtree_control from the root down to the parent (v2).

    Enabling is additive and stays when a later step fails: harmless, and other cgroups may rely on it.
    """
    for depth in range(len(parts) + 1):
        control = _join(root, *parts[:depth], "cgroup.subtree_control")
        enabled = set(_read(control).replace("+", " ").split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(control, " ".join("+" + c for c in missing), _SUBTREE_HINTS)


def _make_leaf(path: StrPath, created: list[StrPath]) -> None:
    try:
        _mkdir(path)
    except OSError as exc:
        raise _failure("create cgroup", path, exc) from exc
    created.append(path)


def _remove_quietly(paths: list[StrPath]) -> None:
    # A parent another container started using meanwhile (EBUSY) or one already gone is fine.
    for path in reversed(paths):
        try:  # noqa: SIM105 - contextlib is not imported on the OCI start-up path
            _rmdir(path)
        except OSError:
            pass


# --- the cgroup ----------------------------------------------------------------------------------


class Cgroup:
    """One container's cgroup: a directory per v1 hierarchy, or one v2 directory."""

    def __init__(
        self,
        layout: Layout,
        name: str,
        parent: tuple[str, ...],
        dirs: dict[str, StrPath],
        applied: dict[str, object] | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self.layout = layout
        self.name = name
        self.parent = "/".join(parent)
        self._dirs = dirs  # v1: controller -> directory; v2: {"unified": directory}
        self.applied: dict[str, object] = applied if applied is not None else {}
        self.warnings: list[str] = warnings if warnings is not None else []

    def __repr__(self) -> str:
        return f"Cgroup(v{self.layout.version}, {self.parent}/{self.name})"

    @property
    def paths(self) -> list[StrPath]:
        """Every directory this cgroup owns (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self._dirs.values()))

    # -- creation --------------------------------------------------------------------------------

    @staticmethod
    def check(layout: Layout, name: str, limits: Limits, parent: str | None = None) -> tuple[str, ...]:
        """What ``create`` refuses before it makes anything (the daemon asks first, so that bad
        input fails before a monitor is involved); returns the parent's path components."""
        _check_name(name)
        parts = _parent_parts(parent)
        limits.validate()
        _require_controllers(layout, limits)
        return parts

    @classmethod
    def create(cls, layout: Layout, name: str, limits: Limits, parent: str | None = None) -> Cgroup:
        """Make the cgroup and write its limits; on any failure remove what was made and raise."""
        parts = cls.check(layout, name, limits, parent)
        created: list[StrPath] = []
        try:
            if layout.version == 2:
                return cls._create_v2(layout, name, parts, limits, created)
            return cls._create_v1(layout, name, parts, limits, created)
        except BaseException:
            _remove_quietly(created)
            raise

    @classmethod
    def _create_v1(
        cls, layout: Layout, name: str, parts: tuple[str, ...], limits: Limits, created: list[StrPath]
    ) -> Cgroup:
        dirs = {c: _join(layout.mounts[c], *parts, name) for c in V1_CONTROLLERS if c in layout.mounts}
        if not dirs:
            raise RuntimeFailure(
                f"none of the cgroup v1 controllers {', '.join(V1_CONTROLLERS)} is mounted under {layout.root}",
                hint="mount them (most distributions do), or boot with cgroup v2",
            )
        for hierarchy in layout.hierarchies(V1_CONTROLLERS):
            leaf = _join(hierarchy, *parts, name)
            try:
                _mkdir(leaf)
            except FileNotFoundError:
                _make_ancestors(hierarchy, parts, created)
                _make_leaf(leaf, created)
            except OSError as exc:
                raise _failure("create cgroup", leaf, exc) from exc
            else:
                created.append(leaf)

        cgroup = cls(layout, name, parts, dirs, {"version": 1})
        if limits.memory is not None:
            # memsw (memory+swap) must be >= memory, so memory goes first; memsw is absent when
            # swap accounting is off, and then there is no swap to limit.
            cgroup._put("memory", "memory.limit_in_bytes", str(limits.memory))
            memsw = limits.memory if limits.memory_swap is None else limits.memory_swap
            cgroup._put("memory", "memory.memsw.limit_in_bytes", str(memsw), optional=True)
        if limits.cpus is not None:
            cgroup._put("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
            cgroup._put("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota_us()))
        if "pids" in dirs:
            cgroup._put("pids", "pids.max", "max" if limits.pids is None else str(limits.pids))
        if "devices" in dirs and not limits.devices_unrestricted:
            # Deny everything, then allow the list; the kernel takes one rule per write. (With an
            # allow-all rule nothing is written: a new cgroup inherits its parent's access.)
            cgroup._put("devices", "devices.deny", "a")
            allowed = [str(rule) for rule in limits.devices]
            for rule in allowed:
                _write(_join(dirs["devices"], "devices.allow"), rule)
            cgroup.applied["devices.allow"] = allowed
        return cgroup

    @classmethod
    def _create_v2(
        cls, layout: Layout, name: str, parts: tuple[str, ...], limits: Limits, created: list[StrPath]
    ) -> Cgroup:
        parent_dir = _join(layout.root, *parts)
        wanted = [c for c in V2_CONTROLLERS if c in layout.controllers]
        enabled = _read_optional(_join(parent_dir, "cgroup.subtree_control"))
        if enabled is None:
            _make_ancestors(layout.root, parts, created)
        if set(wanted) - set((enabled or "").replace("+", " ").split()):
            _enable_controllers(layout.root, parts, wanted)
        leaf = _join(parent_dir, name)
        _make_leaf(leaf, created)

        cgroup = cls(layout, name, parts, {"unified": leaf}, {"version": 2})
        if limits.memory is not None:
            cgroup._put("unified", "memory.max", str(limits.memory))
            # Absent without swap accounting (CONFIG_MEMCG_SWAP off or swapaccount=0).
            swap = "0" if limits.memory_swap is None else (
                "max" if limits.memory_swap < 0 else str(max(limits.memory_swap - limits.memory, 0)))
            cgroup._put("unified", "memory.swap.max", swap, optional=True)
        if limits.cpus is not None:
            cgroup._put("unified", "cpu.max", f"{limits.cpu_quota_us()} {CPU_PERIOD_US}")
        if "pids" in layout.controllers:
            cgroup._put("unified", "pids.max", "max" if limits.pids is None else str(limits.pids))
        if not limits.devices_unrestricted:
            # v2 has no devices.allow: device access is checked by a BPF_PROG_TYPE_CGROUP_DEVICE
            # program attached to the cgroup (devfilter.py, as runc and crun do).
            from isobox.runtimes.container import devfilter  # noqa: PLC0415 - only v2 needs it

            if devfilter.is_cgroup2(str(leaf)):
                rules = [(r.kind, r.major, r.minor, r.access) for r in limits.devices]
                devfilter.attach(str(leaf), devfilter.program(rules))
                cgroup.applied["devices"] = "bpf: " + ", ".join(str(r) for r in limits.devices)
            else:
                cgroup.warnings.append(
                    f"{leaf} is not on a cgroup2 file system: no device filter attached; "
                    "the container can open any device node it can create or is given"
                )
        return cgroup

    def _put(self, controller: str, filename: str, value: str, optional: bool = False) -> None:
        path = _join(self._dirs[controller], filename)
        if optional and not os.path.exists(path):
            return
        _write(path, value)
        self.applied[filename] = value

    # -- re-adoption -----------------------------------------------------------------------------

    @classmethod
    def open(cls, layout: Layout, name: str, parent: str | None = None) -> Cgroup:
        """Adopt an existing cgroup (after a daemon restart); it owns only the directories that exist."""
        _check_name(name)
        parts = _parent_parts(parent)
        if layout.version == 2:
            candidates = {"unified": _join(layout.root, *parts, name)}
        else:
            candidates = {
                c: _join(layout.mounts[c], *parts, name) for c in V1_CONTROLLERS if c in layout.mounts
            }
        dirs = {c: d for c, d in candidates.items() if os.path.isdir(d)}
        if not dirs:
            raise NotFound(f"no cgroup {'/'.join(parts)}/{name}", hint="the container's cgroup is gone")
        cgroup = cls(layout, name, parts, dirs, {"version": layout.version})
        cgroup.applied.update(cgroup._read_back())
        return cgroup

    def _read_back(self) -> dict[str, object]:
        files = {
            1: [
                ("memory", "memory.limit_in_bytes"),
                ("memory", "memory.memsw.limit_in_bytes"),
                ("cpu", "cpu.cfs_period_us"),
                ("cpu", "cpu.cfs_quota_us"),
                ("pids", "pids.max"),
            ],
            2: [("unified", f) for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max")],
        }[self.layout.version]
        values: dict[str, object] = {}
        for controller, filename in files:
            if controller in self._dirs:
                text = _read_optional(_join(self._dirs[controller], filename))
                if text is not None:
                    values[filename] = text.strip()
        if "devices" in self._dirs:
            text = _read_optional(_join(self._dirs["devices"], "devices.list"))
            if text is not None:
                values["devices.list"] = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        return values

    # -- processes -------------------------------------------------------------------------------

    def procs_files(self) -> list[StrPath]:
        """The cgroup.procs to write a pid into: one per v1 hierarchy, one on v2."""
        return [_join(path, "cgroup.procs") for path in self.paths]

    def self_join_files(self) -> list[StrPath]:
        """Files a single-threaded process writes "0" into to move itself into this cgroup.

        On v1 that is ``tasks``: migrating the current thread alone skips the global
        threadgroup rwsem whose RCU grace period makes a ``cgroup.procs`` write cost 7-16 ms
        here (measured), against ~0.6 ms.  v2 has no such file outside threaded mode.
        """
        if self.layout.version == 2:
            return self.procs_files()
        return [_join(path, "tasks") for path in self.paths]

    def join(self, pid: int = 0) -> None:
        """Move process ``pid`` (0: the caller) with all its threads into this cgroup."""
        value = str(pid)
        for procs in self.procs_files():
            _write(procs, value)

    def pids(self) -> list[int]:
        """Processes in the cgroup (the union over v1 hierarchies, in case a join was partial)."""
        found: set[int] = set()
        for procs in self.procs_files():
            text = _read_optional(procs)
            found.update(int(line) for line in (text or "").split())
        return sorted(found)

    def kill_all(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` to every process in the cgroup.

        SIGKILL uses v2's cgroup.kill when the kernel has it (5.14+), which cannot miss a process
        forked meanwhile. Otherwise the cgroup is frozen while the pids are read and signalled, then
        thawed (runc does the same), so a fork bomb can't outrun the loop.
        """
        if sig == SIGKILL and self.layout.version == 2:
            kill_file = _join(self._dirs["unified"], "cgroup.kill")
            if os.path.exists(kill_file):
                _write(kill_file, "1")
                return
        frozen = sig == SIGKILL and self._freeze()
        try:
            for pid in self.pids():
                try:  # noqa: SIM105 - contextlib is not imported on the OCI start-up path
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if frozen:
                self._thaw()

    def _freezer_file(self) -> tuple[StrPath, str, str] | None:
        if self.layout.version == 1:
            if "freezer" not in self._dirs:
                return None
            return _join(self._dirs["freezer"], "freezer.state"), "FROZEN", "THAWED"
        path = _join(self._dirs["unified"], "cgroup.freeze")
        return (path, "1", "0") if os.path.exists(path) else None

    def _freeze(self, timeout: float = 1.0) -> bool:
        freezer = self._freezer_file()
        if freezer is None:
            return False
        path, frozen, _ = freezer
        _write(path, frozen)
        deadline = time.monotonic() + timeout
        while not self._is_frozen():
            if time.monotonic() > deadline:
                break  # a task stuck in uninterruptible sleep; signal what we can anyway
            time.sleep(0.0005)
        return True

    def _is_frozen(self) -> bool:
        if self.layout.version == 1:
            return _read(_join(self._dirs["freezer"], "freezer.state")).strip() == "FROZEN"
        return _keyed(_read(_join(self._dirs["unified"], "cgroup.events"))).get("frozen") == 1

    def _thaw(self) -> None:
        freezer = self._freezer_file()
        if freezer is not None:
            path, _, thawed = freezer
            _write(path, thawed)

    # -- accounting ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int | None]:
        """Current usage.

        ``memory_usage`` leaves out the inactive page cache, as ``docker stats`` and cAdvisor's
        working set do: v1 ``memory.usage_in_bytes - total_inactive_file``, v2 ``memory.current -
        inactive_file``. That cache is reclaimed before the OOM killer runs, so this is the figure
        to compare with ``memory_limit``. ``memory_max_usage`` is the raw high-water mark (v1
        memory.max_usage_in_bytes, v2 memory.peak on 5.19+, else None).
        """
        if self.layout.version == 2:
            return self._stats_v2()
        return self._stats_v1()

    def _stats_v1(self) -> dict[str, int | None]:
        stats: dict[str, int | None] = {"memory_usage": 0, "memory_limit": None, "memory_max_usage": None}
        memory = self._dirs.get("memory")
        if memory is not None:
            usage = int(_read(_join(memory, "memory.usage_in_bytes")))
            inactive = _keyed(_read(_join(memory, "memory.stat"))).get("total_inactive_file", 0)
            stats["memory_usage"] = max(0, usage - inactive)
            stats["memory_limit"] = _limit(_read(_join(memory, "memory.limit_in_bytes")))
            stats["memory_max_usage"] = int(_read(_join(memory, "memory.max_usage_in_bytes")))
        cpuacct = self._dirs.get("cpuacct")
        stats["cpu_usage_ns"] = int(_read(_join(cpuacct, "cpuacct.usage"))) if cpuacct is not None else 0
        pids = self._dirs.get("pids")
        if pids is not None:
            stats["pids_current"] = int(_read(_join(pids, "pids.current")))
            stats["pids_limit"] = _limit(_read(_join(pids, "pids.max")))
        else:
            stats["pids_current"], stats["pids_limit"] = len(self.pids()), None
        return stats

    def _stats_v2(self) -> dict[str, int | None]:
        d = self._dirs["unified"]
        stats: dict[str, int | None] = {"memory_usage": 0, "memory_limit": None, "memory_max_usage": None}
        current = _read_optional(_join(d, "memory.current"))  # absent when memory isn't enabled here
        if current is not None:
            inactive = _keyed(_read(_join(d, "memory.stat"))).get("inactive_file", 0)
            stats["memory_usage"] = max(0, int(current) - inactive)
            stats["memory_limit"] = _limit(_read(_join(d, "memory.max")))
            peak = _read_optional(_join(d, "memory.peak"))
            stats["memory_max_usage"] = int(peak) if peak is not None else None
        # cpu.stat's usage_usec is core accounting, present with or without the cpu controller.
        stats["cpu_usage_ns"] = _keyed(_read(_join(d, "cpu.stat"))).get("usage_usec", 0) * 1000
        current_pids = _read_optional(_join(d, "pids.current"))
        if current_pids is not None:
            stats["pids_current"] = int(current_pids)
            stats["pids_limit"] = _limit(_read(_join(d, "pids.max")))
        else:
            stats["pids_current"], stats["pids_limit"] = len(self.pids()), None
        return stats

    def oom_events_file(self) -> StrPath | None:
        """The file whose ``oom_kill`` counter ``oom_killed`` reads (for the C pump)."""
        if self.layout.version == 2:
            return _join(self._dirs["unified"], "memory.events")
        return _join(self._dirs["memory"], "memory.oom_control") if "memory" in self._dirs else None

    def oom_killed(self) -> bool:
        """Whether the OOM killer killed a process of this cgroup.

        v1 reads ``oom_kill`` from memory.oom_control (kernel 4.13+; older kernels report False:
        memory.failcnt counts limit hits that reclaim resolved, not kills). v2 reads memory.events.
        """
        if self.layout.version == 2:
            events = _read_optional(_join(self._dirs["unified"], "memory.events"))
        elif "memory" in self._dirs:
            events = _read(_join(self._dirs["memory"], "memory.oom_control"))
        else:
            return False
        return _keyed(events).get("oom_kill", 0) > 0

    # -- removal ---------------------------------------------------------------------------------

    def remove(self) -> None:
        """The end of a container's cgroup: kill whatever is left in it, then remove it."""
        self.kill_all()
        self.destroy()

    def destroy(self, timeout: float = 2.0) -> None:
        """Remove every directory; retry EBUSY until ``timeout`` (processes still exiting).

        Missing directories are fine, so this is idempotent. Parent directories are shared and stay.
        """
        deadline = time.monotonic() + timeout
        failures: list[tuple[StrPath, OSError]] = []
        for path in self.paths:
            delay = 0.0005
            while True:
                try:
                    _rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                        continue
                    failures.append((path, exc))
                break
        if failures:
            first = _failure("remove cgroup", *failures[0])
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise RuntimeFailure(first.message + more, hint=first.hint)


def _require_controllers(layout: Layout, limits: Limits) -> None:
    """A requested limit whose controller is missing is an error, not a silently ignored limit."""
    needed = []
    if limits.memory is not None:
        needed.append("memory")
    if limits.cpus is not None:
        needed.append("cpu")
    if limits.pids is not None:
        needed.append("pids")
    if layout.version == 1 and not limits.devices_unrestricted:
        needed.append("devices")
    missing = [c for c in needed if c not in layout.controllers]
    if missing:
        raise RuntimeFailure(
            f"cgroup controller(s) {', '.join(missing)} not available (cgroup v{layout.version} at {layout.root})",
            hint="enable them in the kernel/boot options, or drop the corresponding limit",
        )


def leftovers(layout: Layout, parent: str | None = None) -> list[StrPath]:
    """Child cgroup directories under ``parent`` in every hierarchy."""
    parts = _parent_parts(parent)
    found: list[StrPath] = []
    for hierarchy in layout.hierarchies():
        try:
            entries = list(os.scandir(_join(hierarchy, *parts)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.extend(type(hierarchy)(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    return sorted(found)
