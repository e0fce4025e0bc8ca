"""An OCI bundle's config.json, checked and turned into the runtime's own configuration objects.

The spec is config.md and config-linux.md of opencontainers/runtime-spec.  Parsing is strict:
a field this runtime does not implement is an error naming the field (an empty value of it is
accepted), so a container never silently runs with less isolation than its config asked for.
"""

from __future__ import annotations

import os
import resource

from isobox.errors import InvalidArgument
from isobox.oci import jsonio
from isobox.oci.state import read_file
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.config import CapSets, ContainerConfig, DeviceNode, MountSpec, ProcessConfig

# Plain classes rather than dataclasses, no typing import, and JSON through jsonio: every engine
# call starts a new process, and those imports cost more here than the whole container set-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAMESPACES = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "cgroup": sc.CLONE_NEWCGROUP,
}

# mount(8) options -> (set, clear) of MS_* flags
MS_SYNCHRONOUS, MS_MANDLOCK, MS_DIRSYNC, MS_NODIRATIME, MS_RELATIME = 16, 64, 128, 2048, 1 << 21
MS_UNBINDABLE, MS_SHARED = 1 << 17, 1 << 20
MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0), "mand": (MS_MANDLOCK, 0), "nomand": (0, MS_MANDLOCK),
    "noatime": (sc.MS_NOATIME, 0), "atime": (0, sc.MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0), "nostrictatime": (0, sc.MS_STRICTATIME),
    "remount": (sc.MS_REMOUNT, 0), "defaults": (0, 0),
}  # fmt: skip
PROPAGATION = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | sc.MS_REC,
}  # fmt: skip
# Accepted and ignored: SELinux relabel requests (no SELinux here) and Podman's tmpfs copy-up
# hint for an empty tmpfs over an empty directory.
IGNORED_OPTIONS = frozenset({"z", "Z", "tmpcopyup", "notmpcopyup"})
REFUSED_OPTIONS = frozenset({"idmap", "ridmap", "rro", "rrw", "copy-symlink"})


def _bad(where: str, what: str, hint: str | None = None) -> InvalidArgument:
    return InvalidArgument(f"config.json: {where}: {what}", hint=hint)


def _unsupported(where: str) -> InvalidArgument:
    return _bad(where, "not supported by isobox-runtime", hint="remove it from config.json")


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, f"expected a list, got {type(value).__name__}")
    return value


def _int(value: Any, where: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, f"expected an integer, got {value!r}")
    return value


def _str(value: Any, where: str, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _bad(where, f"expected a string, got {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    items = _list(value, where)
    for i, item in enumerate(items):
        _str(item, f"{where}[{i}]")
    return items


def _only(obj: dict[str, Any], where: str, known: set[str], ignored: set[str] = set()) -> None:  # noqa: B006
    """Refuse keys this runtime does not know or implement, unless their value is empty."""
    for key, value in obj.items():
        if key in known or key in ignored:
            continue
        if value in (None, "", [], {}, 0, False):
            continue
        raise _unsupported(f"{where}.{key}" if where else key)


# --- process -------------------------------------------------------------------------------------


class OciProcess:
    def __init__(self, proc: ProcessConfig, apparmor: str = "", oom_score_adj: int | None = None) -> None:
        self.proc, self.apparmor, self.oom_score_adj = proc, apparmor, oom_score_adj


def _cap_names(value: Any, where: str) -> tuple[str, ...]:
    from isobox.runtimes.container.caps import CAPS  # noqa: PLC0415

    names = []
    for i, name in enumerate(_strings(value, where)):
        norm = name.upper().removeprefix("CAP_")
        if norm not in CAPS:
            raise _bad(f"{where}[{i}]", f"unknown capability {name!r}")
        names.append(norm)
    return tuple(names)


def _rlimits(value: Any) -> tuple[tuple[int, int, int], ...]:
    out = []
    for i, item in enumerate(_list(value, "process.rlimits")):
        where = f"process.rlimits[{i}]"
        item = _obj(item, where)
        name = _str(item.get("type"), f"{where}.type")
        which = getattr(resource, name, None) if name.startswith("RLIMIT_") else None
        if not isinstance(which, int):
            raise _bad(f"{where}.type", f"unknown rlimit {name!r}")
        out.append((which, _int(item.get("soft"), f"{where}.soft"), _int(item.get("hard"), f"{where}.hard")))
    return tuple(out)


def parse_process(doc: Any, where: str = "process") -> OciProcess:
    p = _obj(doc, where)
    _only(p, where, {"terminal", "consoleSize", "cwd", "env", "args", "rlimits", "capabilities",
                     "noNewPrivileges", "oomScoreAdj", "user", "apparmorProfile"})
    args = _strings(p.get("args"), f"{where}.args")
    if not args:
        raise _bad(f"{where}.args", "must name the program to run")
    cwd = _str(p.get("cwd"), f"{where}.cwd", "/")
    if not cwd.startswith("/"):
        raise _bad(f"{where}.cwd", f"{cwd!r} is not an absolute path")
    if cwd.rstrip("/").startswith(("/proc/self/fd", "/proc/thread-self/fd")) or "/fd/" in cwd and cwd.startswith(
            "/proc/"):
        # CVE-2024-21626: a leaked host directory fd as working directory is a way out of the root.
        raise _bad(f"{where}.cwd", f"{cwd!r} is inside /proc/*/fd: refused (CVE-2024-21626)")
    env: dict[str, str] = {}
    for i, item in enumerate(_strings(p.get("env"), f"{where}.env")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise _bad(f"{where}.env[{i}]", f"{item!r} is not KEY=VALUE")
        env[key] = value
    user = _obj(p.get("user"), f"{where}.user")
    _only(user, f"{where}.user", {"uid", "gid", "additionalGids", "umask"})
    caps = _obj(p.get("capabilities"), f"{where}.capabilities")
    _only(caps, f"{where}.capabilities", {"bounding", "effective", "permitted", "inheritable", "ambient"})
    cap_sets = CapSets(*(_cap_names(caps.get(k), f"{where}.capabilities.{k}")
                         for k in ("bounding", "effective", "permitted", "inheritable", "ambient")))
    umask = user.get("umask")
    proc = ProcessConfig(
        argv=args, env=env, cwd=cwd, tty=bool(p.get("terminal")), interactive=True,
        no_new_privs=bool(p.get("noNewPrivileges")),
        uid=_int(user.get("uid"), f"{where}.user.uid", 0), gid=_int(user.get("gid"), f"{where}.user.gid", 0),
        additional_gids=tuple(_int(g, f"{where}.user.additionalGids")
                              for g in _list(user.get("additionalGids"), f"{where}.user.additionalGids")),
        cap_sets=cap_sets, rlimits=_rlimits(p.get("rlimits")),
        umask=None if umask is None else _int(umask, f"{where}.user.umask"),
    )
    oom = p.get("oomScoreAdj")
    return OciProcess(proc, _str(p.get("apparmorProfile"), f"{where}.apparmorProfile", ""),
                      None if oom is None else _int(oom, f"{where}.oomScoreAdj"))


# --- mounts --------------------------------------------------------------------------------------


def parse_mount(doc: Any, where: str, bundle: str) -> MountSpec:
    m = _obj(doc, where)
    _only(m, where, {"destination", "type", "source", "options"})
    dest = _str(m.get("destination"), f"{where}.destination")
    if not dest.startswith("/"):
        raise _bad(f"{where}.destination", f"{dest!r} is not an absolute path")
    fstype = _str(m.get("type"), f"{where}.type", "") or None
    source = m.get("source")
    source = None if source is None else _str(source, f"{where}.source")
    flags = clear = propagation = 0
    data: list[str] = []
    bind = recursive = False
    for option in _strings(m.get("options"), f"{where}.options"):
        if option in ("bind", "rbind"):
            bind, recursive = True, recursive or option == "rbind"
        elif option in MOUNT_FLAGS:
            add, remove = MOUNT_FLAGS[option]
            flags, clear = (flags | add) & ~remove, (clear | remove) & ~add
        elif option in PROPAGATION:
            propagation = PROPAGATION[option]
        elif option in REFUSED_OPTIONS:
            raise _bad(f"{where}.options", f"{option!r} is not supported")
        elif option not in IGNORED_OPTIONS:
            data.append(option)  # file-system specific (mode=755, size=...), as runc passes them
    if fstype == "bind":
        bind, fstype = True, None
    if bind:
        if not source:
            raise _bad(f"{where}.source", "a bind mount needs a source")
        source = source if source.startswith("/") else os.path.join(bundle, source)
        fstype = None
    elif fstype is None:
        raise _bad(f"{where}.type", "needed unless the options say bind/rbind")
    elif fstype not in ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay"):
        raise _bad(f"{where}.type", f"{fstype!r} is not supported",
                   hint="supported: bind, proc, sysfs, tmpfs, devpts, mqueue, cgroup, cgroup2, overlay")
    if fstype == "cgroup2":
        fstype = "cgroup"  # mount_cgroup_fs picks v1 or v2 from what the host has
    return MountSpec(dest, fstype, source, flags, ",".join(data) or None, bind, recursive, propagation)


# --- linux ---------------------------------------------------------------------------------------


class Namespaces:
    def __init__(self) -> None:
        self.new = 0  # CLONE_NEW* to unshare (pid included: it is created by the runtime before fork)
        self.join: list[tuple[str, int]] = []  # (path, CLONE_NEW*) to join


def parse_namespaces(value: Any) -> Namespaces:
    ns = Namespaces()
    seen: set[str] = set()
    for i, item in enumerate(_list(value, "linux.namespaces")):
        where = f"linux.namespaces[{i}]"
        item = _obj(item, where)
        _only(item, where, {"type", "path"})
        kind = _str(item.get("type"), f"{where}.type")
        if kind in ("user", "time"):
            raise _bad(f"{where}.type", f"{kind} namespaces are not supported yet")
        if kind not in NAMESPACES:
            raise _bad(f"{where}.type", f"unknown namespace type {kind!r}")
        if kind in seen:
            raise _bad(f"{where}.type", f"{kind} namespace listed twice")
        seen.add(kind)
        path = item.get("path")
        if path:
            ns.join.append((_str(path, f"{where}.path"), NAMESPACES[kind]))
        else:
            ns.new |= NAMESPACES[kind]
    if "mount" not in seen:
        raise _bad("linux.namespaces", "a mount namespace is required (the runtime pivots into the root)")
    return ns


def parse_devices(value: Any) -> tuple[DeviceNode, ...]:
    nodes = []
    for i, item in enumerate(_list(value, "linux.devices")):
        where = f"linux.devices[{i}]"
        d = _obj(item, where)
        _only(d, where, {"path", "type", "major", "minor", "fileMode", "uid", "gid"})
        kind = _str(d.get("type"), f"{where}.type")
        if kind not in ("c", "b", "u", "p"):
            raise _bad(f"{where}.type", f"{kind!r} is not one of c, b, u, p")
        path = _str(d.get("path"), f"{where}.path")
        if not path.startswith("/dev/"):
            raise _bad(f"{where}.path", f"{path!r} is not under /dev")
        nodes.append(DeviceNode(path, kind, _int(d.get("major"), f"{where}.major", 0),
                                _int(d.get("minor"), f"{where}.minor", 0), _int(d.get("fileMode"), where, 0o666),
                                _int(d.get("uid"), where, 0), _int(d.get("gid"), where, 0)))
    return tuple(nodes)


class OciResources:
    def __init__(self) -> None:
        self.memory: int | None = None
        self.memory_swap: int | None = None
        self.cpus: float | None = None
        self.pids: int | None = None
        self.device_allow: list[tuple[str, int | None, int | None, str]] = []
        self.allow_all_devices = False


def parse_resources(value: Any) -> OciResources:
    r = _obj(value, "linux.resources")
    _only(r, "linux.resources", {"memory", "cpu", "pids", "devices"})
    out = OciResources()
    mem = _obj(r.get("memory"), "linux.resources.memory")
    _only(mem, "linux.resources.memory", {"limit", "swap"}, {"disableOOMKiller", "useHierarchy"})
    if mem.get("disableOOMKiller"):
        raise _unsupported("linux.resources.memory.disableOOMKiller")
    if mem.get("limit") is not None and mem["limit"] > 0:
        out.memory = _int(mem["limit"], "linux.resources.memory.limit")
        if mem.get("swap") is not None:
            out.memory_swap = _int(mem["swap"], "linux.resources.memory.swap")
    cpu = _obj(r.get("cpu"), "linux.resources.cpu")
    _only(cpu, "linux.resources.cpu", {"quota", "period"})
    quota = cpu.get("quota")
    if quota is not None and quota > 0:
        period = _int(cpu.get("period"), "linux.resources.cpu.period", 100_000)
        out.cpus = _int(quota, "linux.resources.cpu.quota") / period
    pids = _obj(r.get("pids"), "linux.resources.pids")
    _only(pids, "linux.resources.pids", {"limit"})
    limit = pids.get("limit")
    if limit is not None and limit > 0:
        out.pids = _int(limit, "linux.resources.pids.limit")
    for i, rule in enumerate(_list(r.get("devices"), "linux.resources.devices")):
        where = f"linux.resources.devices[{i}]"
        rule = _obj(rule, where)
        _only(rule, where, {"allow", "type", "major", "minor", "access"})
        kind = _str(rule.get("type"), f"{where}.type", "a")
        access = _str(rule.get("access"), f"{where}.access", "rwm")
        major, minor = rule.get("major"), rule.get("minor")
        everything = kind == "a" and major in (None, -1) and minor in (None, -1)
        if not rule.get("allow"):
            if everything and i == 0 and set(access) == set("rwm"):
                continue  # deny-all first is what the device cgroup starts from
            raise _bad(where, "only a leading deny-all rule is supported among deny rules")
        if everything and set(access) == set("rwm"):
            out.allow_all_devices = True
        out.device_allow.append((kind, None if major in (None, -1) else major,
                                 None if minor in (None, -1) else minor, access))
    return out


# --- the whole document --------------------------------------------------------------------------


class Hook:
    def __init__(self, path: str, args: list[str], env: list[str], timeout: int | None) -> None:
        self.path, self.args, self.env, self.timeout = path, args, env, timeout


HOOK_KINDS = ("prestart", "createRuntime", "poststart", "poststop")


def parse_hooks(value: Any) -> dict[str, list[Hook]]:
    h = _obj(value, "hooks")
    _only(h, "hooks", set(HOOK_KINDS))
    hooks: dict[str, list[Hook]] = {}
    for kind in HOOK_KINDS:
        for i, item in enumerate(_list(h.get(kind), f"hooks.{kind}")):
            where = f"hooks.{kind}[{i}]"
            item = _obj(item, where)
            _only(item, where, {"path", "args", "env", "timeout"})
            path = _str(item.get("path"), f"{where}.path")
            if not path.startswith("/"):
                raise _bad(f"{where}.path", f"{path!r} is not absolute")
            timeout = item.get("timeout")
            hooks.setdefault(kind, []).append(Hook(path, _strings(item.get("args"), f"{where}.args") or [path],
                                                   _strings(item.get("env"), f"{where}.env"),
                                                   None if timeout is None else _int(timeout, where)))
    return hooks


class Bundle:
    """A parsed bundle: the container's configuration plus what only the OCI path uses."""

    def __init__(self, *, path: str, id: str, config: ContainerConfig, namespaces: Namespaces,
                 resources: OciResources, cgroups_path: str, seccomp: dict[str, Any] | None,
                 hooks: dict[str, list[Hook]], annotations: dict[str, str], apparmor: str,
                 oom_score_adj: int | None) -> None:
        self.path, self.id, self.config, self.namespaces, self.resources = path, id, config, namespaces, resources
        self.cgroups_path, self.seccomp, self.hooks, self.annotations = cgroups_path, seccomp, hooks, annotations
        self.apparmor, self.oom_score_adj = apparmor, oom_score_adj


def load(bundle: str, container_id: str) -> Bundle:
    path = os.path.join(bundle, "config.json")
    try:
        doc = jsonio.loads(read_file(path))
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{path}: no such file", hint="is --bundle the bundle directory?") from exc
    except ValueError as exc:
        raise InvalidArgument(f"{path}: not valid JSON: {exc}") from exc
    return parse(doc, os.path.abspath(bundle), container_id)


def parse(doc: Any, bundle: str, container_id: str) -> Bundle:
    doc = _obj(doc, "config.json")
    _only(doc, "", {"ociVersion", "root", "mounts", "process", "hostname", "hooks", "annotations", "linux"})
    version = _str(doc.get("ociVersion"), "ociVersion")
    if not version.startswith(("1.0", "1.1", "1.2")):
        raise _bad("ociVersion", f"{version!r} is not a supported version (1.0.x - 1.2.x)")
    root = _obj(doc.get("root"), "root")
    _only(root, "root", {"path", "readonly"})
    rootfs = _str(root.get("path"), "root.path")
    rootfs = os.path.normpath(rootfs if rootfs.startswith("/") else os.path.join(bundle, rootfs))
    if not os.path.isdir(rootfs):
        raise _bad("root.path", f"{rootfs} is not a directory")
    oci_proc = parse_process(doc.get("process"))
    linux = _obj(doc.get("linux"), "linux")
    _only(linux, "linux", {"namespaces", "devices", "cgroupsPath", "resources", "rootfsPropagation", "seccomp",
                           "sysctl", "maskedPaths", "readonlyPaths"}, {"mountLabel"})
    namespaces = parse_namespaces(linux.get("namespaces"))
    hostname = _str(doc.get("hostname"), "hostname", "")
    if hostname and not (namespaces.new & sc.CLONE_NEWUTS):
        raise _bad("hostname", "setting it needs a new uts namespace")
    propagation = _str(linux.get("rootfsPropagation"), "linux.rootfsPropagation", "rslave")
    if propagation not in PROPAGATION:
        raise _bad("linux.rootfsPropagation", f"unknown propagation {propagation!r}")
    sysctl = {_str(k, "linux.sysctl"): _str(v, f"linux.sysctl.{k}")
              for k, v in _obj(linux.get("sysctl"), "linux.sysctl").items()}
    seccomp = linux.get("seccomp")
    annotations = {_str(k, "annotations"): _str(v, f"annotations.{k}")
                   for k, v in _obj(doc.get("annotations"), "annotations").items()}
    cfg = ContainerConfig(
        id=container_id, lowerdirs=[], upperdir="", workdir="", rootfs=rootfs, hostname=hostname,
        process=oci_proc.proc, cgroup_procs=[],
        read_only=bool(root.get("readonly")),
        masked_paths=tuple(_strings(linux.get("maskedPaths"), "linux.maskedPaths")),
        readonly_paths=tuple(_strings(linux.get("readonlyPaths"), "linux.readonlyPaths")),
        mount_plan=[parse_mount(m, f"mounts[{i}]", bundle) for i, m in enumerate(_list(doc.get("mounts"), "mounts"))],
        devices=parse_devices(linux.get("devices")), sysctl=sysctl, root_propagation=PROPAGATION[propagation],
    )
    return Bundle(
        path=bundle, id=container_id, config=cfg, namespaces=namespaces,
        resources=parse_resources(linux.get("resources")),
        cgroups_path=_str(linux.get("cgroupsPath"), "linux.cgroupsPath", ""),
        seccomp=None if seccomp is None else _obj(seccomp, "linux.seccomp"),
        hooks=parse_hooks(doc.get("hooks")), annotations=annotations,
        apparmor=oci_proc.apparmor, oom_score_adj=oci_proc.oom_score_adj,
    )
