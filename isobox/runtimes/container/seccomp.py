"""Seccomp: parse profiles, compile them to BPF with libseccomp, and load the program.

Compiling happens in the daemon, before fork, and is cached: every container start with the
same profile and capabilities reuses the same program.  The forked child only calls
``install``, which is one prctl(2) -- no libseccomp (and no allocation) after fork.

Profiles come from ``seccomp_profile`` (the default) or from JSON in the Docker/Podman
seccomp.json format or the OCI runtime-spec ``linux.seccomp`` object (``profile_from_json``).
Rule semantics follow runc, as both use libseccomp: unknown syscall names are skipped, a rule
whose action equals the default action is dropped, several comparisons of the same argument
in one rule become one rule per comparison, and an unconditional rule for a syscall replaces
its conditional ones (the first unconditional one wins).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
from collections.abc import Iterable, Iterator
from typing import Any

from isobox.errors import InvalidArgument, RuntimeFailure
from isobox.runtimes.container.seccomp_profile import (
    DEFAULT_ERRNO,
    Action,
    ArgCondition,
    Op,
    Profile,
    Rule,
)
from isobox.runtimes.container.seccomp_profile import default_profile as _default_profile

# install lives in syscalls.py: the forked child loads a program without importing this module.
from isobox.runtimes.container.syscalls import BPF_MAXINSNS
from isobox.runtimes.container.syscalls import SOCK_FILTER_SIZE as _SOCK_FILTER_SIZE
from isobox.runtimes.container.syscalls import install_seccomp as install

__all__ = [
    "DEFAULT_ERRNO",
    "Action",
    "ArgCondition",
    "Op",
    "Profile",
    "Rule",
    "allowlist_size",
    "arch_token",
    "compile_bpf",
    "default_profile",
    "install",
    "native_arch",
    "profile_from_json",
    "syscall_number",
]

# libseccomp's seccomp.h
_ACTION_CODES = {
    Action.KILL: 0x00000000,
    Action.KILL_PROCESS: 0x80000000,
    Action.TRAP: 0x00030000,
    Action.ERRNO: 0x00050000,
    Action.TRACE: 0x7FF00000,
    Action.LOG: 0x7FFC0000,
    Action.ALLOW: 0x7FFF0000,
}
_OP_CODES = {Op.NE: 1, Op.LT: 2, Op.LE: 3, Op.EQ: 4, Op.GE: 5, Op.GT: 6, Op.MASKED_EQ: 7}
_ALLOWING = (Action.ALLOW, Action.LOG)
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_OPTIMIZE = 8
_NR_SCMP_ERROR = -1

# libseccomp's architecture names, and what each can also run (Docker's archMap).
ARCHES = (
    "x86", "x86_64", "x32", "arm", "aarch64", "loongarch64", "m68k", "mips", "mips64",
    "mips64n32", "mipsel", "mipsel64", "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x",
    "parisc", "parisc64", "riscv64", "sh", "sheb",
)  # fmt: skip
COMPAT_ARCHES = {
    "x86_64": ("x86", "x32"),
    "aarch64": ("arm",),
    "mips64": ("mips", "mips64n32"),
    "mips64n32": ("mips", "mips64"),
    "mipsel64": ("mipsel", "mipsel64n32"),
    "mipsel64n32": ("mipsel", "mipsel64"),
    "s390x": ("s390",),
}
# Docker's names for architectures in "includes"/"excludes" (Go's GOARCH, mostly).
_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "x86": "386", "ppc64le": "ppc64le"}
_MACHINE_ARCH = {"i386": "x86", "i686": "x86", "armv7l": "arm", "armv8l": "arm", "arm64": "aarch64"}


# --- libseccomp binding ------------------------------------------------------------------------


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise RuntimeFailure(
            "libseccomp is not available", hint="install libseccomp2 (Debian) or libseccomp (Fedora)"
        ) from exc
    ctx = ctypes.c_void_p
    lib.seccomp_init.argtypes, lib.seccomp_init.restype = (ctypes.c_uint32,), ctx
    lib.seccomp_release.argtypes, lib.seccomp_release.restype = (ctx,), None
    lib.seccomp_arch_native.argtypes, lib.seccomp_arch_native.restype = (), ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes, lib.seccomp_arch_resolve_name.restype = (
        (ctypes.c_char_p,),
        ctypes.c_uint32,
    )
    lib.seccomp_arch_add.argtypes, lib.seccomp_arch_add.restype = (ctx, ctypes.c_uint32), ctypes.c_int
    lib.seccomp_attr_set.argtypes, lib.seccomp_attr_set.restype = (
        (ctx, ctypes.c_int, ctypes.c_uint32),
        ctypes.c_int,
    )
    lib.seccomp_syscall_resolve_name.argtypes, lib.seccomp_syscall_resolve_name.restype = (
        (ctypes.c_char_p,),
        ctypes.c_int,
    )
    lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_num_arch.argtypes = (ctypes.c_uint32, ctypes.c_int)
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # malloc'd char *
    lib.seccomp_rule_add_array.argtypes = (
        ctx,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes, lib.seccomp_export_bpf.restype = (ctx, ctypes.c_int), ctypes.c_int
    return lib


def _check(rc: int, what: str) -> None:
    """libseccomp returns -errno."""
    if rc < 0:
        raise RuntimeFailure(f"libseccomp: {what}: {os.strerror(-rc)}")


@functools.cache
def native_arch() -> str:
    """The host's architecture, by libseccomp's name ("x86_64")."""
    lib = _libseccomp()
    native = lib.seccomp_arch_native()
    for name in ARCHES:
        if lib.seccomp_arch_resolve_name(name.encode()) == native:
            return name
    return platform.machine()


def arch_token(arch: str) -> int:
    """libseccomp's token for an architecture: its AUDIT_ARCH_* value, as in seccomp_data.arch."""
    token = _libseccomp().seccomp_arch_resolve_name(arch.encode())
    if not token:
        raise InvalidArgument(f"unknown architecture {arch!r}")
    return int(token)


@functools.cache
def syscall_number(name: str, arch: str | None = None) -> int | None:
    """The syscall's number on ``arch`` (default: native); natively, a negative libseccomp
    pseudo-number if only another architecture has it (chown32 on x86_64); None if unknown."""
    lib = _libseccomp()
    if arch is None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
    else:
        nr = lib.seccomp_syscall_resolve_name_arch(arch_token(arch), name.encode())
    return None if nr == _NR_SCMP_ERROR else int(nr)


@functools.cache
def _native_syscall_count() -> int:
    lib = _libseccomp()
    native = lib.seccomp_arch_native()
    count = 0
    for nr in range(1024):
        ptr = lib.seccomp_syscall_resolve_num_arch(native, nr)
        if ptr:
            count += 1
            libc.free(ptr)
    return count


# --- selecting rules ---------------------------------------------------------------------------


def _normalize_cap(name: str) -> str:
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


@functools.cache
def _kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)  # "6.1.0-18-amd64", "6.8.0-rc1+"
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _parse_kernel(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", text)  # "4.8"; a patch level is ignored
    if not match:
        raise InvalidArgument(f"seccomp: invalid minKernel {text!r}", hint='use "MAJOR.MINOR", e.g. "4.8"')
    return int(match[1]), int(match[2])


def _applies(rule: Rule, caps: frozenset[str], arch: str) -> bool:
    docker_arch = _DOCKER_ARCH.get(arch, arch)
    return (
        all(_normalize_cap(c) in caps for c in rule.includes_caps)
        and not any(_normalize_cap(c) in caps for c in rule.excludes_caps)
        and (not rule.includes_arches or docker_arch in rule.includes_arches or arch in rule.includes_arches)
        and not (docker_arch in rule.excludes_arches or arch in rule.excludes_arches)
        and (rule.min_kernel is None or _kernel_version() >= _parse_kernel(rule.min_kernel))
    )


def _code(action: Action, errno_ret: int | None) -> int:
    code = _ACTION_CODES[action]
    if action in (Action.ERRNO, Action.TRACE):
        code |= (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return code


def _arg_groups(args: tuple[ArgCondition, ...]) -> list[tuple[ArgCondition, ...]]:
    """libseccomp takes one comparison per argument: like runc, split such a rule into one rule
    per comparison (which turns AND into OR -- what runc does, so profiles behave the same)."""
    indexes = [a.index for a in args]
    if len(set(indexes)) == len(indexes):
        return [args]
    return [(a,) for a in args]


def _filter_entries(
    profile: Profile, caps: frozenset[str], arch: str
) -> Iterator[tuple[str, int, int, tuple[ArgCondition, ...]]]:
    """(name, number, action code, conditions) for each libseccomp rule to add, in order."""
    default = _code(profile.default_action, profile.default_errno)
    for rule in profile.rules:
        code = _code(rule.action, rule.errno)
        if code == default or not _applies(rule, caps, arch):
            continue
        for name in rule.names:
            nr = syscall_number(name)
            if nr is None:
                continue
            for group in _arg_groups(rule.args):
                yield name, nr, code, group


# --- compiling ---------------------------------------------------------------------------------


def _architectures(profile: Profile) -> tuple[str, ...]:
    native = native_arch()
    wanted = profile.architectures or (native, *COMPAT_ARCHES.get(native, ()))
    return tuple(a for a in wanted if a != native)


def _add_rule(
    lib: ctypes.CDLL, ctx: int, name: str, nr: int, code: int, args: tuple[ArgCondition, ...]
) -> None:
    array = (_ArgCmp * len(args))(*(_ArgCmp(a.index, _OP_CODES[a.op], a.value, a.value_two) for a in args))
    rc = lib.seccomp_rule_add_array(ctx, code, nr, len(args), array)
    _check(rc, f"adding a rule for {name}" + (f" with {len(args)} argument comparisons" if args else ""))


def _build(profile: Profile, caps: frozenset[str]) -> bytes:
    lib = _libseccomp()
    ctx = lib.seccomp_init(_code(profile.default_action, profile.default_errno))
    if not ctx:
        raise RuntimeFailure(
            "libseccomp: seccomp_init failed", hint="is the default action supported by this kernel?"
        )
    try:
        # We set no_new_privs ourselves (or not: --security-opt no-new-privileges=false).
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "clearing the no_new_privs attribute")
        for arch in _architectures(profile):
            token = lib.seccomp_arch_resolve_name(arch.encode())
            if token:  # an architecture this libseccomp does not know cannot run here either
                rc = lib.seccomp_arch_add(ctx, token)
                if rc != -errno.EEXIST:
                    _check(rc, f"adding architecture {arch}")
        seen: set[tuple[int, int, tuple[ArgCondition, ...]]] = set()
        for name, nr, code, args in _filter_entries(profile, caps, native_arch()):
            if (nr, code, args) not in seen:
                seen.add((nr, code, args))
                _add_rule(lib, ctx, name, nr, code, args)
        if len({nr for nr, _, _ in seen}) > 32:
            # A binary search over syscall numbers instead of a linear scan: each syscall the
            # workload makes pays O(log n) instead of up to ~400 comparisons (runc does this too;
            # libseccomp <= 2.5.4 misbehaves with it on an empty filter).
            _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2), "enabling the binary tree")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("isobox-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "exporting the BPF program")
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while size > 0:
            chunk = os.read(fd, size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _compile_cached(profile: Profile, caps: frozenset[str]) -> bytes:
    bpf = _build(profile, caps)
    if len(bpf) // _SOCK_FILTER_SIZE > BPF_MAXINSNS:
        raise RuntimeFailure(
            f"seccomp profile compiles to {len(bpf) // _SOCK_FILTER_SIZE} BPF instructions, more than the kernel's {BPF_MAXINSNS}",
            hint="list fewer syscalls or argument rules",
        )
    return bpf


def compile_bpf(profile: Profile, caps: Iterable[str]) -> bytes:
    """The raw ``struct sock_filter`` array for ``profile`` in a container holding ``caps``.

    Cached: the daemon compiles the same profile for every container start.
    """
    return _compile_cached(profile, frozenset(_normalize_cap(c) for c in caps))


def default_profile() -> Profile:
    return _cached_default_profile()


@functools.cache
def _cached_default_profile() -> Profile:
    # One immutable object, so that compile_bpf's cache finds it by identity.
    return _default_profile()


def allowlist_size(profile: Profile, caps: Iterable[str]) -> int:
    """How many of the native architecture's syscalls the workload can make, at least with some
    arguments (for ``inspect``)."""
    capset = frozenset(_normalize_cap(c) for c in caps)
    unconditional: dict[int, int] = {}
    conditional_allow: set[int] = set()
    for _, nr, code, args in _filter_entries(profile, capset, native_arch()):
        if nr < 0:
            continue
        if not args:
            unconditional.setdefault(nr, code)  # libseccomp: the first one wins
        elif code in (_ACTION_CODES[Action.ALLOW], _ACTION_CODES[Action.LOG]):
            conditional_allow.add(nr)
    allow_codes = {_ACTION_CODES[a] for a in _ALLOWING}
    if profile.default_action in _ALLOWING:
        denied = {nr for nr, code in unconditional.items() if code not in allow_codes}
        return _native_syscall_count() - len(denied)
    allowed = {nr for nr, code in unconditional.items() if code in allow_codes}
    allowed |= {nr for nr in conditional_allow if nr not in unconditional}
    return len(allowed)


# --- loading -----------------------------------------------------------------------------------


libc = ctypes.CDLL(None, use_errno=True)
libc.free.argtypes, libc.free.restype = (ctypes.c_void_p,), None


# --- JSON profiles -----------------------------------------------------------------------------

_ACTIONS = {a.value: a for a in Action} | {"SCMP_ACT_KILL_THREAD": Action.KILL}
_OPS = {o.value: o for o in Op}
_ACCEPTED_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC"}  # meaningless here: the child is single-threaded


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(f"seccomp profile: {message}", hint="see the OCI runtime spec, linux.seccomp")


def _action(value: Any, where: str) -> Action:
    if value == "SCMP_ACT_NOTIFY":
        raise _bad(f"{where}: SCMP_ACT_NOTIFY is not supported")
    if not isinstance(value, str) or value not in _ACTIONS:
        raise _bad(f"{where}: unknown action {value!r}")
    return _ACTIONS[value]


def _uint(value: Any, where: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise _bad(f"{where}: expected an integer from 0 to {limit - 1}, got {value!r}")
    return value


def _errno(value: Any, where: str) -> int | None:
    return None if value is None else _uint(value, where, 1 << 16)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{where}: expected a list of strings")
    return tuple(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}: expected an object")
    return value


def _arch_name(value: str, where: str) -> str:
    name = value.removeprefix("SCMP_ARCH_").lower()
    if not value.startswith("SCMP_ARCH_") or name not in ARCHES:
        raise _bad(f"{where}: unknown architecture {value!r}")
    return name


def _machine_arch() -> str:
    machine = platform.machine()
    return _MACHINE_ARCH.get(machine, machine)


def _architectures_from_json(doc: dict[str, Any]) -> tuple[str, ...]:
    arches = _strings(doc.get("architectures"), "architectures")
    arch_map = doc.get("archMap")
    if arches and arch_map:
        raise _bad("both architectures and archMap are set")
    if not arch_map:
        return tuple(_arch_name(a, "architectures") for a in arches)
    if not isinstance(arch_map, list):
        raise _bad("archMap: expected a list")
    native = _machine_arch()
    for i, entry in enumerate(arch_map):
        where = f"archMap[{i}]"
        entry = _object(entry, where)
        main = entry.get("architecture")
        if not isinstance(main, str):
            raise _bad(f"{where}.architecture: expected a string")
        if _arch_name(main, where) == native:  # Docker: the entry for the host, with its sub-arches
            subs = _strings(entry.get("subArchitectures"), f"{where}.subArchitectures")
            return (native, *(_arch_name(s, where) for s in subs))
    return ()


def _condition(arg: Any, where: str) -> ArgCondition:
    arg = _object(arg, where)
    op = arg.get("op")
    if not isinstance(op, str) or op not in _OPS:
        raise _bad(f"{where}.op: unknown operator {op!r}")
    return ArgCondition(
        index=_uint(arg.get("index"), f"{where}.index", 6),
        value=_uint(arg.get("value", 0), f"{where}.value", 1 << 64),
        value_two=_uint(arg.get("valueTwo", 0), f"{where}.valueTwo", 1 << 64),
        op=_OPS[op],
    )


def _rule(entry: Any, where: str) -> Rule:
    entry = _object(entry, where)
    names = _strings(entry.get("names"), f"{where}.names")
    if isinstance(entry.get("name"), str):  # the old single-name form
        names = (*names, entry["name"])
    if not names or not all(names):
        raise _bad(f"{where}: no syscall names")
    args = entry.get("args")
    args = [] if args is None else args
    if not isinstance(args, list):
        raise _bad(f"{where}.args: expected a list")
    includes = _object(entry.get("includes"), f"{where}.includes")
    excludes = _object(entry.get("excludes"), f"{where}.excludes")
    min_kernel = includes.get("minKernel")
    if min_kernel is not None:
        if not isinstance(min_kernel, str):
            raise _bad(f"{where}.includes.minKernel: expected a string")
        _parse_kernel(min_kernel)
    return Rule(
        names=names,
        action=_action(entry.get("action"), f"{where}.action"),
        errno=_errno(entry.get("errnoRet"), f"{where}.errnoRet"),
        args=tuple(_condition(a, f"{where}.args[{i}]") for i, a in enumerate(args)),
        includes_caps=tuple(
            _normalize_cap(c) for c in _strings(includes.get("caps"), f"{where}.includes.caps")
        ),
        excludes_caps=tuple(
            _normalize_cap(c) for c in _strings(excludes.get("caps"), f"{where}.excludes.caps")
        ),
        includes_arches=_strings(includes.get("arches"), f"{where}.includes.arches"),
        excludes_arches=_strings(excludes.get("arches"), f"{where}.excludes.arches"),
        min_kernel=min_kernel,
    )


def profile_from_json(doc: Any) -> Profile:
    """A profile from a Docker/Podman seccomp.json document or an OCI ``linux.seccomp`` object."""
    if not isinstance(doc, dict):
        raise _bad(f"expected a JSON object, got {type(doc).__name__}")
    flags = set(_strings(doc.get("flags"), "flags")) - _ACCEPTED_FLAGS
    if flags:
        raise _bad(f"flags {', '.join(sorted(flags))} are not supported")
    if doc.get("listenerPath"):
        raise _bad("listenerPath (seccomp notify) is not supported")
    syscalls = doc.get("syscalls")
    syscalls = [] if syscalls is None else syscalls
    if not isinstance(syscalls, list):
        raise _bad("syscalls: expected a list")
    return Profile(
        default_action=_action(doc.get("defaultAction"), "defaultAction"),
        default_errno=_errno(doc.get("defaultErrnoRet"), "defaultErrnoRet"),
        rules=tuple(_rule(entry, f"syscalls[{i}]") for i, entry in enumerate(syscalls)),
        architectures=_architectures_from_json(doc),
    )
