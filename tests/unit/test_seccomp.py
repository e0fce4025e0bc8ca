"""Seccomp: the default profile, JSON profiles, compiling, and the filter in a real process.

Most checks run the compiled program through a small classic-BPF interpreter (``verdict``), so
they need neither root nor a fork; a few load it for real in a forked child.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import time
import traceback
from collections.abc import Callable

import pytest

from isobox.errors import InvalidArgument
from isobox.runtimes.container import seccomp
from isobox.runtimes.container import seccomp_profile as sp
from isobox.runtimes.container.caps import CAPS, DEFAULT_CAPS

NATIVE = seccomp.native_arch()
x86_64_only = pytest.mark.skipif(NATIVE != "x86_64", reason="numbers and sub-architectures of x86_64")

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000


def eperm(n: int = errno.EPERM) -> int:
    return RET_ERRNO | n


ENOSYS = RET_ERRNO | errno.ENOSYS


# --- a classic BPF interpreter, for the subset libseccomp emits ----------------------------------


def run_bpf(program: bytes, data: bytes) -> int:
    insns = [struct.unpack_from("=HBBI", program, off) for off in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            (acc,) = struct.unpack_from("=I", data, k)
        elif code == 0x54:  # and #k
            acc &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset #k
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k
        elif code == 0x16:  # ret a
            return acc
        else:
            raise AssertionError(f"BPF opcode {code:#x} not interpreted")


def verdict(program: bytes, name: str, *args: int, arch: str = NATIVE) -> int:
    """What the filter answers for syscall ``name`` with ``args`` on ``arch``."""
    nr = seccomp.syscall_number(name, arch)
    assert nr is not None and nr >= 0, f"{name} has no number on {arch}"
    token = seccomp.arch_token("x86_64" if arch == "x32" else arch)  # x32 runs as AUDIT_ARCH_X86_64
    padded = [*args, 0, 0, 0, 0, 0, 0][:6]
    data = struct.pack("=iIQ6Q", nr, token, 0, *padded)
    return run_bpf(program, data)


@pytest.fixture(scope="module")
def default_bpf() -> bytes:
    return seccomp.compile_bpf(seccomp.default_profile(), DEFAULT_CAPS)


# --- the default profile as data -----------------------------------------------------------------


def allowed_names(profile: seccomp.Profile, caps: tuple[str, ...]) -> set[str]:
    return {
        name
        for rule in profile.rules
        if rule.action == sp.Action.ALLOW
        and set(rule.includes_caps) <= set(caps)
        and not set(rule.excludes_caps) & set(caps)
        for name in rule.names
    }


def test_default_allow_list() -> None:
    assert 300 <= len(sp.ALLOWED) <= 450
    assert len(set(sp.ALLOWED)) == len(sp.ALLOWED)
    names = allowed_names(seccomp.default_profile(), DEFAULT_CAPS)
    assert {"read", "write", "execve", "clone", "exit_group", "socket", "personality"} <= names
    assert not {n for n in names if n.startswith("io_uring")}


def test_lists_do_not_overlap() -> None:
    gated = [name for _, names in sp.CAPABILITY_GATED for name in names]
    assert len(gated) == len(set(gated))
    groups = [
        set(sp.ALLOWED),
        set(sp.DENIED),
        set(gated),
        {"clone", "clone3", "unshare", "socket", "personality"},
    ]
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            assert not a & b


@pytest.mark.parametrize(
    "caps", [(), DEFAULT_CAPS, ("SYS_ADMIN",), ("AUDIT_WRITE", "SYS_PTRACE"), tuple(CAPS)]
)
def test_no_syscall_mixes_unconditional_and_conditional_rules(caps: tuple[str, ...]) -> None:
    # libseccomp lets an unconditional rule silently replace a syscall's conditional ones.
    unconditional: set[str] = set()
    conditional: set[str] = set()
    for rule in seccomp.default_profile().rules:
        if set(rule.includes_caps) <= set(caps) and not set(rule.excludes_caps) & set(caps):
            (conditional if rule.args else unconditional).update(rule.names)
    assert not unconditional & conditional


# --- the compiled default filter ---------------------------------------------------------------

DANGEROUS = [
    "add_key", "keyctl", "request_key", "bpf", "init_module", "finit_module", "delete_module",
    "create_module", "mount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "pivot_root", "reboot", "kexec_load", "kexec_file_load",
    "clock_settime", "settimeofday", "swapon", "swapoff", "perf_event_open", "userfaultfd",
    "open_by_handle_at", "setns", "unshare", "lookup_dcookie", "quotactl", "acct", "ptrace",
    "process_vm_readv", "process_vm_writev", "iopl", "ioperm", "syslog", "vhangup", "nfsservctl",
    "sysfs", "_sysctl", "uselib", "sethostname", "chroot", "mbind",
]  # fmt: skip


def test_compile_returns_sock_filters(default_bpf: bytes) -> None:
    assert isinstance(default_bpf, bytes)
    assert len(default_bpf) % 8 == 0
    assert 0 < len(default_bpf) // 8 <= seccomp.BPF_MAXINSNS


def test_compile_is_cached() -> None:
    profile = seccomp.default_profile()
    first = seccomp.compile_bpf(profile, list(DEFAULT_CAPS))
    start = time.perf_counter()
    again = seccomp.compile_bpf(
        seccomp.default_profile(), [f"cap_{c.lower()}" for c in reversed(DEFAULT_CAPS)]
    )
    assert time.perf_counter() - start < 0.005
    assert again is first


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_syscalls_fail_with_eperm(default_bpf: bytes, name: str) -> None:
    caps = DEFAULT_CAPS if name != "chroot" else tuple(c for c in DEFAULT_CAPS if c != "SYS_CHROOT")
    program = seccomp.compile_bpf(seccomp.default_profile(), caps)
    nr = seccomp.syscall_number(name)
    if nr is None or nr < 0:
        pytest.skip(f"{name} does not exist on {NATIVE}")
    args = (0x20000,) if name == "unshare" else ()  # CLONE_NEWNS
    assert verdict(program, name, *args) == eperm()


def test_everyday_syscalls_are_allowed(default_bpf: bytes) -> None:
    for name in ("read", "write", "openat", "execve", "mmap", "futex", "getpid", "exit_group", "chroot"):
        assert verdict(default_bpf, name) == RET_ALLOW, name


def test_unlisted_syscalls_fail_with_enosys(default_bpf: bytes) -> None:
    assert verdict(default_bpf, "io_uring_setup") == ENOSYS
    assert verdict(default_bpf, "clone3") == ENOSYS  # glibc falls back to clone
    data = struct.pack("=iIQ6Q", 999, seccomp.arch_token(NATIVE), 0, *[0] * 6)
    assert run_bpf(default_bpf, data) == ENOSYS


def test_clone_and_unshare_flags(default_bpf: bytes) -> None:
    sigchld, clone_thread_flags = 17, 0x3D0F00
    assert verdict(default_bpf, "clone", sigchld) == RET_ALLOW
    assert verdict(default_bpf, "clone", clone_thread_flags) == RET_ALLOW
    for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert verdict(default_bpf, "clone", sigchld | flag) == eperm(), hex(flag)
        assert verdict(default_bpf, "unshare", flag) == eperm(), hex(flag)
    assert verdict(default_bpf, "unshare", 0x80) == eperm()  # CLONE_NEWTIME
    assert verdict(default_bpf, "unshare", 0x400 | 0x200) == RET_ALLOW  # CLONE_FILES|CLONE_FS


def test_sys_admin_lifts_the_namespace_and_mount_gates() -> None:
    program = seccomp.compile_bpf(seccomp.default_profile(), [*DEFAULT_CAPS, "SYS_ADMIN"])
    assert verdict(program, "clone", 17 | 0x10000000) == RET_ALLOW
    assert verdict(program, "clone3") == RET_ALLOW
    for name in ("mount", "umount2", "setns", "unshare", "pivot_root", "bpf", "syslog"):
        assert verdict(program, name) == RET_ALLOW, name
    for name in ("keyctl", "kexec_load", "init_module", "reboot"):  # other capabilities
        assert verdict(program, name) == eperm(), name


@pytest.mark.parametrize(
    ("cap", "names"),
    [("SYS_PTRACE", ["ptrace", "process_vm_readv", "kcmp"]), ("SYS_MODULE", ["init_module", "delete_module"]),
     ("SYS_TIME", ["settimeofday", "clock_settime"]), ("SYS_BOOT", ["reboot"]), ("SYSLOG", ["syslog"]),
     ("SYS_PACCT", ["acct"]), ("SYS_RAWIO", ["iopl", "ioperm"]), ("SYS_NICE", ["mbind"]),
     ("DAC_READ_SEARCH", ["open_by_handle_at"]), ("BPF", ["bpf"]), ("PERFMON", ["perf_event_open"])],
)  # fmt: skip
def test_capability_gates(cap: str, names: list[str]) -> None:
    program = seccomp.compile_bpf(seccomp.default_profile(), [*DEFAULT_CAPS, cap])
    for name in names:
        assert verdict(program, name) == RET_ALLOW, name
    assert verdict(program, "mount") == eperm()


PERSONALITY_ARGS = [0, 8, 0x20000, 0x20008, 0xFFFFFFFF, 1, 7, 9, 0x10, 0x0040000, 0x0400000, 0x20009,
                    0xFFFFFFF7, 0xFFFDFFFF, 0xFFFDFFF7, 0xFFFFFFFE, 0x7FFFFFFF, 0x1_00000000, 0x1_00000008,
                    0xFFFFFFFF_FFFFFFFF, 0x80000000]  # fmt: skip


@pytest.mark.parametrize("value", PERSONALITY_ARGS)
def test_personality(default_bpf: bytes, value: int) -> None:
    want = RET_ALLOW if value in sp.PERSONALITY_ALLOWED else eperm()
    assert verdict(default_bpf, "personality", value) == want


def test_socket(default_bpf: bytes) -> None:
    af_unix, af_inet, af_inet6, af_packet, sock_stream = 1, 2, 10, 17, 1
    for domain in (0, af_unix, af_inet, af_inet6, af_packet, 8, 24, 32, 41, 44, 48, 56, 0x1_00000002):
        assert verdict(default_bpf, "socket", domain, sock_stream) == RET_ALLOW, domain
    # AF_VSOCK, also with junk in the upper half of the register (the kernel reads an int)
    for domain in (40, 0x1_00000028, 0xFFFFFFFF_00000028):
        assert verdict(default_bpf, "socket", domain, sock_stream) == eperm(errno.EAFNOSUPPORT), hex(domain)
    assert verdict(default_bpf, "socket", 16, 3, 0) == RET_ALLOW  # NETLINK_ROUTE
    assert verdict(default_bpf, "socket", 16, 3, 9) == eperm(errno.EINVAL)  # NETLINK_AUDIT
    with_audit = seccomp.compile_bpf(seccomp.default_profile(), [*DEFAULT_CAPS, "AUDIT_WRITE"])
    assert verdict(with_audit, "socket", 16, 3, 9) == RET_ALLOW
    assert verdict(with_audit, "socket", 40, 1, 0) == eperm(errno.EAFNOSUPPORT)


@x86_64_only
def test_compat_architectures(default_bpf: bytes) -> None:
    # Docker's archMap: 32-bit x86 and x32 programs get the same profile, not SIGSYS.
    for arch in ("x86", "x32"):
        assert verdict(default_bpf, "read", arch=arch) == RET_ALLOW
        assert verdict(default_bpf, "keyctl", arch=arch) == eperm()
        assert verdict(default_bpf, "personality", 0x0040000, arch=arch) == eperm()
        assert verdict(default_bpf, "personality", 0xFFFFFFFF, arch=arch) == RET_ALLOW
        assert verdict(default_bpf, "clone", 17 | 0x10000000, arch=arch) == eperm()
    assert verdict(default_bpf, "chown32", arch="x86") == RET_ALLOW


def test_allowlist_size() -> None:
    profile = seccomp.default_profile()
    base = seccomp.allowlist_size(profile, DEFAULT_CAPS)
    assert 250 <= base <= 450
    assert seccomp.allowlist_size(profile, [*DEFAULT_CAPS, "SYS_ADMIN"]) > base
    assert seccomp.allowlist_size(profile, [c for c in DEFAULT_CAPS if c != "SYS_CHROOT"]) == base - 1
    everything = seccomp.Profile(seccomp.Action.ALLOW)
    keyctl_denied = seccomp.Profile(
        seccomp.Action.ALLOW, rules=(seccomp.Rule(("keyctl",), seccomp.Action.ERRNO),)
    )
    assert seccomp.allowlist_size(keyctl_denied, []) == seccomp.allowlist_size(everything, []) - 1


# --- JSON profiles -------------------------------------------------------------------------------

SMALL_OCI = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
        },
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {
            "names": ["ptrace"],
            "action": "SCMP_ACT_ALLOW",
            "includes": {"minKernel": "4.8", "caps": ["CAP_SYS_PTRACE"]},
        },
        {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "comment": "not namespaced"},
        {"names": ["no_such_syscall"], "action": "SCMP_ACT_KILL_THREAD"},
    ],
}


def test_profile_from_json_small_oci() -> None:
    profile = seccomp.profile_from_json(SMALL_OCI)
    A, Op = seccomp.Action, seccomp.Op
    assert profile == seccomp.Profile(
        default_action=A.ERRNO,
        default_errno=38,
        architectures=("x86_64", "x86"),
        rules=(
            seccomp.Rule(("read", "write"), A.ALLOW),
            seccomp.Rule(("personality",), A.ALLOW, args=(seccomp.ArgCondition(0, 8, 0, Op.EQ),)),
            seccomp.Rule(("clone",), A.ALLOW, args=(seccomp.ArgCondition(0, 0x7E020000, 0, Op.MASKED_EQ),),
                         excludes_caps=("SYS_ADMIN",)),
            seccomp.Rule(("ptrace",), A.ALLOW, includes_caps=("SYS_PTRACE",), min_kernel="4.8"),
            seccomp.Rule(("keyctl",), A.ERRNO, errno=1),
            seccomp.Rule(("no_such_syscall",), A.KILL),
        ),
    )  # fmt: skip
    program = seccomp.compile_bpf(profile, DEFAULT_CAPS)  # the unknown name is skipped
    assert verdict(program, "read") == RET_ALLOW
    assert verdict(program, "personality", 8) == RET_ALLOW
    assert verdict(program, "personality", 0) == ENOSYS
    assert verdict(program, "clone", 17) == RET_ALLOW
    assert verdict(program, "clone", 17 | 0x10000000) == ENOSYS
    assert verdict(program, "keyctl") == eperm()
    assert verdict(program, "ptrace") == ENOSYS
    assert verdict(seccomp.compile_bpf(profile, ["SYS_PTRACE"]), "ptrace") == RET_ALLOW
    assert verdict(seccomp.compile_bpf(profile, ["SYS_ADMIN"]), "clone", 17) == ENOSYS


def test_profile_from_json_docker_format() -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [{"name": "getpid", "action": "SCMP_ACT_ALLOW", "args": None}],
    }
    profile = seccomp.profile_from_json(doc)
    assert profile.default_errno is None  # EPERM, as runc
    assert profile.rules == (seccomp.Rule(("getpid",), seccomp.Action.ALLOW),)
    expected = {"x86_64": ("x86_64", "x86", "x32"), "aarch64": ("aarch64", "arm")}.get(NATIVE, ())
    assert profile.architectures == expected
    program = seccomp.compile_bpf(profile, [])
    assert verdict(program, "getpid") == RET_ALLOW
    assert verdict(program, "getppid") == eperm()


def test_same_argument_twice_becomes_two_rules() -> None:
    # runc's behaviour: libseccomp takes one comparison per argument, so the rule is split.
    doc = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["dup"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 0, "value": 5, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]}],
    }  # fmt: skip
    program = seccomp.compile_bpf(seccomp.profile_from_json(doc), [])
    assert [verdict(program, "dup", fd) for fd in (5, 6, 7)] == [eperm(), RET_ALLOW, eperm()]


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        ([], "expected a JSON object"),
        ("SCMP_ACT_ALLOW", "expected a JSON object"),
        ({}, "defaultAction: unknown action None"),
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "unknown action 'SCMP_ACT_MAYBE'"),
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY is not supported"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls: expected a list"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["read"]}, "syscalls[0]: expected an object"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}, "syscalls[0]: no syscall names"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read", "action": "SCMP_ACT_ERRNO"}]},
         "syscalls[0].names: expected a list of strings"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_DENY"}]},
         "syscalls[0].action: unknown action"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}, "syscalls[0].args[0].op: unknown operator"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "syscalls[0].args[0].index"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}, "syscalls[0].args[0].value"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "EPERM"}, "defaultErrnoRet"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "unknown architecture"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"], "archMap": [{}]}, "both"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}, "not supported"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
          "includes": {"minKernel": "new"}}]}, "minKernel"),
    ],
)  # fmt: skip
def test_profile_from_json_rejects_garbage(doc: object, complaint: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        seccomp.profile_from_json(doc)
    assert complaint in exc.value.message
    assert "\n" not in exc.value.message


# --- the filter in a real process ----------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PR_SET_NO_NEW_PRIVS = 38


def raw_syscall(name: str, *args: int) -> int:
    """The syscall's result, or -errno."""
    nr = seccomp.syscall_number(name)
    assert nr is not None and nr >= 0, name
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    return -ctypes.get_errno() if rc == -1 else int(rc)


def in_filtered_child(bpf: bytes, probe: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Fork; the child sets no_new_privs, installs ``bpf``, runs ``probe`` and reports back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
            seccomp.install(bpf)
            result: dict[str, object] = {"ok": probe()}
        except BaseException:
            result, code = {"error": traceback.format_exc()}, 1
        os.write(write_end, json.dumps(result).encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    report = json.loads(data)
    assert "error" not in report, report["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return report["ok"]


def test_default_filter_in_a_process(default_bpf: bytes) -> None:
    keyctl_get_keyring_id, key_spec_session_keyring = 0, (1 << 64) - 3
    clone_newns, clone_newuser, clone_fs, clone_files, sigchld = 0x20000, 0x10000000, 0x200, 0x400, 17

    def probe() -> dict[str, int]:
        sock = raw_syscall("socket", 1, 1, 0)  # AF_UNIX works
        if sock >= 0:
            os.close(sock)
        return {
            "getpid": raw_syscall("getpid") == os.getpid(),
            "keyctl": raw_syscall("keyctl", keyctl_get_keyring_id, key_spec_session_keyring, 0),
            "unshare_newns": raw_syscall("unshare", clone_newns),
            "unshare_newuser": raw_syscall("unshare", clone_newuser),
            "unshare_files": raw_syscall("unshare", clone_files),
            # the kernel alone would say EINVAL to these flag combinations: no process is made
            "clone_newns": raw_syscall("clone", clone_newns | clone_fs | sigchld, 0, 0, 0, 0),
            "clone3": raw_syscall("clone3", 0, 0),
            "kexec_load": raw_syscall("kexec_load", 0, 0, 0, 0),
            "umount2": raw_syscall("umount2", 0, 0),
            "setns": raw_syscall("setns", (1 << 64) - 1, 0),
            "io_uring_setup": raw_syscall("io_uring_setup", 0, 0),
            "personality_query": raw_syscall("personality", 0xFFFFFFFF) >= 0,
            "personality_norandom": raw_syscall("personality", 0x0040000),
            "vsock": raw_syscall("socket", 40 | 1 << 32, 1, 0),
            "unix_socket": sock >= 0,
        }

    got = in_filtered_child(default_bpf, probe)
    assert got == {
        "getpid": True,
        "keyctl": -errno.EPERM,
        "unshare_newns": -errno.EPERM,
        "unshare_newuser": -errno.EPERM,
        "unshare_files": 0,
        "clone_newns": -errno.EPERM,
        "clone3": -errno.ENOSYS,
        "kexec_load": -errno.EPERM,
        "umount2": -errno.EPERM,
        "setns": -errno.EPERM,
        "io_uring_setup": -errno.ENOSYS,
        "personality_query": True,
        "personality_norandom": -errno.EPERM,
        "vsock": -errno.EAFNOSUPPORT,
        "unix_socket": True,
    }


@x86_64_only
def test_removed_syscall_is_denied_in_a_process(default_bpf: bytes) -> None:
    # nfsservctl (180) is gone from the kernel (ENOSYS) but listed as denied, like containers/common.
    got = in_filtered_child(default_bpf, lambda: {"nfsservctl": raw_syscall("nfsservctl")})
    assert got == {"nfsservctl": -errno.EPERM}


def test_custom_profile_in_a_process() -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}],
    }
    bpf = seccomp.compile_bpf(seccomp.profile_from_json(doc), DEFAULT_CAPS)
    buf = ctypes.create_string_buffer(4096)

    def probe() -> dict[str, int]:
        return {
            "getcwd": raw_syscall("getcwd", ctypes.addressof(buf), len(buf)),
            "getpid": raw_syscall("getpid") == os.getpid(),
            "keyctl": raw_syscall("keyctl", 0, (1 << 64) - 3, 0) != -errno.EACCES,
        }

    assert in_filtered_child(bpf, probe) == {"getcwd": -errno.EACCES, "getpid": True, "keyctl": True}


def test_install_rejects_a_bad_program() -> None:
    with pytest.raises(InvalidArgument):
        seccomp.install(b"1234567")
    with pytest.raises(InvalidArgument):
        seccomp.install(b"")
