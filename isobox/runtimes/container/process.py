"""Becoming the workload: identity, capabilities, no_new_privs, seccomp, then exec.

Runs in the forked child after it has entered the container's namespaces and root (both for
the container's first process and for ``exec``), so ``/etc/passwd`` is the image's.
"""

from __future__ import annotations

import os
import resource
import warnings  # noqa: F401 - os.execvpe imports it: here, before pivot_root takes the stdlib away

from isobox.errors import EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND, InvalidArgument
from isobox.runtimes.container import caps as capabilities
from isobox.runtimes.container import syscalls as sc
from isobox.runtimes.container.config import CapSets, ProcessConfig
from isobox.runtimes.container.records import dataclass  # (no dataclasses import: records.py)

TYPE_CHECKING = False  # (nor typing's, nor contextlib: the OCI runtime's start-up path)
if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class Identity:
    uid: int
    gid: int
    groups: list[int]
    home: str


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n").split(":") for line in fh if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_identity(user: str, read_db: Callable[[str], list[list[str]]] = _read_db) -> Identity:
    """Docker's ``-u NAME|UID[:GROUP|GID]`` against the image's passwd and group files
    (``read_db`` reads them: from ``/`` inside the container, from the layers for gVisor)."""
    name, _, group = (user or "0").partition(":")
    passwd = read_db("/etc/passwd")
    entry = next((e for e in passwd if len(e) >= 7 and (e[0] == name or e[2] == name)), None)
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5] or "/"
    elif name.isdigit():
        uid, gid, home = int(name), 0, "/"  # Docker: an unknown numeric uid runs with gid 0
    else:
        raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
    groups_db = read_db("/etc/group")
    if group:
        grp = next((g for g in groups_db if len(g) >= 3 and (g[0] == group or g[2] == group)), None)
        if grp is not None:
            gid = int(grp[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise InvalidArgument(f"unable to find group {group}: no matching entries in group file")
    username = entry[0] if entry else None
    extra = [int(g[2]) for g in groups_db if len(g) >= 4 and username and username in g[3].split(",")]
    return Identity(uid, gid, sorted({gid, *extra}), home)


_REHEARSAL_DB = {"/etc/passwd": [["root", "x", "0", "0", "root", "/root", "/bin/sh"]],
                 "/etc/group": [["root", "x", "0", "root"]]}


def rehearse() -> None:
    """Run the pure-Python part of becoming a workload once, with made-up data and no state
    changed, in a pooled init while it waits: its first run in a process just forked from a
    Python parent pays ~0.7 ms of copy-on-write faults on the start's critical path (measured:
    user lookup 0.94 -> 0.25 ms in a fresh fork once rehearsed)."""
    _read_db("/dev/null")  # the text-file machinery
    ident = resolve_identity("0", lambda path: _REHEARSAL_DB.get(path, []))
    prepare_env(ProcessConfig(argv=["true"], env={"A": "1"}), ident, "rehearsal")
    capabilities.mask(capabilities.DEFAULT_CAPS)
    capabilities.last_cap()
    effective, permitted, inheritable = capabilities.capget()
    capabilities.capset(effective, permitted, inheritable)  # the sets it has: nothing changes
    # The exec's path search, through "directories" that are a device node: nothing can be found,
    # whoever creates what on the host (ENOTDIR for each).
    try:  # noqa: SIM105 - contextlib is not imported on the OCI start-up path
        os.execvpe("isobox-rehearsal", ["isobox-rehearsal"], {"PATH": "/dev/null:/dev/null"})
    except OSError:
        pass


def explicit_identity(proc: ProcessConfig) -> Identity:
    """An OCI ``process.user``: numeric ids as given; HOME from the image's passwd if listed."""
    assert proc.uid is not None
    entry = next((e for e in _read_db("/etc/passwd") if len(e) >= 7 and e[2] == str(proc.uid)), None)
    return Identity(proc.uid, proc.gid, list(proc.additional_gids), (entry[5] if entry else "") or "/")


def identity_of(proc: ProcessConfig) -> Identity:
    return explicit_identity(proc) if proc.uid is not None else resolve_identity(proc.user)


def apply_cap_sets(sets: CapSets) -> None:
    """Leave the process with exactly the five OCI sets (after setuid with PR_SET_KEEPCAPS)."""
    _, permitted, _ = capabilities.capget()
    capabilities.capset(permitted, permitted, 0)  # CAP_SETPCAP effective for the bounding drops
    capabilities.drop_bounding(sets.bounding)
    capabilities.ambient_clear_all()
    top = (1 << (capabilities.last_cap() + 1)) - 1
    capabilities.capset(capabilities.mask(sets.effective) & top, capabilities.mask(sets.permitted) & top,
                        capabilities.mask(sets.inheritable) & top)
    for name in sets.ambient:
        # As runc: an ambient capability that is not also inheritable cannot be raised (EPERM);
        # that is not an error, the set just stays without it.
        try:  # noqa: SIM105 - contextlib is not imported on the OCI start-up path
            capabilities.ambient_raise(capabilities.CAPS[name])
        except PermissionError:
            pass


def prepare_env(proc: ProcessConfig, ident: Identity, hostname: str | None) -> dict[str, str]:
    env = dict(proc.env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", ident.home)
    if hostname is not None:
        env.setdefault("HOSTNAME", hostname)
    if proc.tty:
        env.setdefault("TERM", "xterm")
    return env


def become(proc: ProcessConfig, ident: Identity) -> None:
    """Drop to the workload's identity and privileges.  Order follows runc's finalizeNamespace."""
    early_seccomp = proc.seccomp_bpf is not None and not proc.no_new_privs
    if early_seccomp:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
        sc.install_seccomp(proc.seccomp_bpf)  # type: ignore[arg-type]
    for which, soft, hard in proc.rlimits:
        resource.setrlimit(which, (soft, hard))
    capabilities.keep_caps_across_setuid()
    os.setgroups(ident.groups)
    os.setgid(ident.gid)
    os.setuid(ident.uid)
    if proc.cap_sets is not None:
        apply_cap_sets(proc.cap_sets)
    else:
        capabilities.apply(proc.caps, root_user=ident.uid == 0)
    if proc.umask is not None:
        os.umask(proc.umask)
    if proc.no_new_privs:
        sc.set_no_new_privs()
    # setuid resets dumpable: keep this process (host code in the container's namespaces)
    # out of reach of /proc/PID/exe and ptrace until exec replaces it (CVE-2019-5736).
    sc.set_dumpable(False)


def seal(proc: ProcessConfig, keep_fds: tuple[int, ...]) -> None:
    """The last steps before an exec into the container (the workload's, or --init's): no host
    fd but ``keep_fds`` survives (CVE-2024-21626), and the seccomp filter is loaded now if
    no_new_privs allows it without CAP_SYS_ADMIN (else become() loaded it already)."""
    sc.close_range_from(3, keep_fds)
    if proc.seccomp_bpf is not None and proc.no_new_privs:
        sc.install_seccomp(proc.seccomp_bpf)


def exec_workload(proc: ProcessConfig, env: dict[str, str], keep_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    """exec; returns only on failure, with Docker's exit code and message."""
    seal(proc, keep_fds)
    argv = proc.argv
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        where = "in $PATH" if "/" not in argv[0] else ""
        return EXIT_NOT_FOUND, f'exec: "{argv[0]}": executable file not found {where}'.rstrip()
    except PermissionError:
        return EXIT_CANNOT_INVOKE, f'exec: "{argv[0]}": permission denied'
    except OSError as exc:
        return EXIT_CANNOT_INVOKE, f'exec: "{argv[0]}": {exc.strerror}'
    return EXIT_CANNOT_INVOKE, "exec returned"
